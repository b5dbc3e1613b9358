//! The MCP server (`mcp-addr:`): the Model Context Protocol over "Streamable HTTP"
//! at `/`, so an AI assistant can look at replication and restore a database. As in
//! Litestream 0.5, the tools carry Litestream's names and run this binary's own
//! commands with the daemon's config file; a tool's output is the command's output.
//!
//! Each POST carries one JSON-RPC 2.0 message and gets one JSON answer (no event
//! stream): `initialize`, `ping`, `tools/list` and `tools/call`; notifications get
//! `202 Accepted`. Tool arguments become separate command-line arguments (never a
//! shell line), and values that look like flags are refused.
//!
//! Its tools can reset a database and restore to any path, so the surface is
//! closed by default (unlike Litestream's, which serves `:3001` on every interface
//! to anyone):
//! - without `mcp-token`, it binds to loopback only (`:3001` means
//!   `127.0.0.1:3001`; a non-loopback host is refused), and accepts only requests
//!   whose `Host` names a loopback address, against DNS rebinding;
//! - with `mcp-token` (or `SLUICE_MCP_TOKEN`), every request must carry
//!   `Authorization: Bearer TOKEN`, and it may bind to any interface;
//! - a request with an `Origin` header must come from a loopback origin;
//! - request bodies are capped at [`MAX_BODY`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use serde_json::{Value, json};
use tracing::info;

const PROTOCOL_VERSION: &str = "2025-03-26";

/// One tool: its name, what it does, its arguments (name, description, required),
/// and the command it runs.
struct Tool {
    name: &'static str,
    description: &'static str,
    args: &'static [(&'static str, &'static str, bool)],
    command: fn(&Value) -> Result<Vec<String>, String>,
}

const TOOLS: &[Tool] = &[
    Tool {
        name: "litestream_version",
        description: "The version of Sluice (a Litestream 0.5 compatible replicator).",
        args: &[],
        command: |_| Ok(vec!["version".into()]),
    },
    Tool {
        name: "litestream_databases",
        description: "The databases in the config file and their replica types.",
        args: &[],
        command: |_| Ok(vec!["databases".into()]),
    },
    Tool {
        name: "litestream_status",
        description: "Local replication state of each database: status, newest TXID, WAL size.",
        args: &[],
        command: |_| Ok(vec!["status".into()]),
    },
    Tool {
        name: "litestream_info",
        description: "The running daemon: version, pid, start time, uptime and config file, then its databases.",
        args: &[],
        command: |_| Ok(vec!["databases".into()]),
    },
    Tool {
        name: "litestream_ltx",
        description: "The LTX files of a replica, per level.",
        args: &[
            ("path", "Database path from the config file, or a replica URL", true),
            ("level", "A level (0-9) or \"all\" (default 0)", false),
        ],
        command: |a| {
            let mut c = vec!["ltx".to_string()];
            if let Some(l) = arg(a, "level")? {
                c.extend(["-level".into(), l]);
            }
            c.push(required(a, "path")?);
            Ok(c)
        },
    },
    Tool {
        name: "litestream_restore",
        description: "Restore a database from its replica to a new file, at the latest state or a point in time.",
        args: &[
            ("path", "Database path from the config file, or a replica URL", true),
            ("o", "Output path (must not exist)", true),
            ("txid", "Restore up to this TXID (16 hex digits)", false),
            ("timestamp", "Restore the state as of this RFC 3339 time", false),
        ],
        command: |a| {
            let mut c = vec!["restore".to_string(), "-o".into(), required(a, "o")?];
            for flag in ["txid", "timestamp"] {
                if let Some(v) = arg(a, flag)? {
                    c.extend([format!("-{flag}"), v]);
                }
            }
            c.push(required(a, "path")?);
            Ok(c)
        },
    },
    Tool {
        name: "litestream_reset",
        description: "Delete a database's local LTX files, so the next sync starts from a snapshot.",
        args: &[("path", "Database path from the config file", true)],
        command: |a| Ok(vec!["reset".into(), required(a, "path")?]),
    },
];

/// An optional string argument; values that could be read as flags are refused.
fn arg(args: &Value, name: &str) -> Result<Option<String>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.starts_with('-') => Err(format!("argument {name} must not start with '-'")),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(format!("argument {name} must be a non-empty string")),
    }
}

fn required(args: &Value, name: &str) -> Result<String, String> {
    arg(args, name)?.ok_or_else(|| format!("argument {name} is required"))
}

struct Server {
    config: PathBuf,
    expand_env: bool,
    exe: PathBuf,
    /// SHA-256 of the bearer token, when one is configured.
    token: Option<[u8; 32]>,
}

/// The largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

fn digest(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Whether `host` (a `Host` header or an origin's host, with or without a port)
/// names this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let h = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h),
    };
    h.eq_ignore_ascii_case("localhost") || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where to listen: `addr` as given when a token is set; otherwise loopback only.
fn listen_addr(addr: &str, token: bool) -> Result<String> {
    if token {
        return Ok(addr.to_string());
    }
    let (host, port) =
        addr.rsplit_once(':').ok_or_else(|| anyhow!("invalid mcp-addr {addr:?}: expected HOST:PORT or :PORT"))?;
    if host.is_empty() {
        return Ok(format!("127.0.0.1:{port}"));
    }
    if !is_loopback_host(host) {
        anyhow::bail!(
            "mcp-addr {addr} would serve MCP (whose tools reset and restore databases) to the network without authentication; \
             set mcp-token (or SLUICE_MCP_TOKEN) to require a bearer token, or use 127.0.0.1:{port}"
        );
    }
    Ok(addr.to_string())
}

/// Why a request is refused before it is read, if it is.
fn refuse(server: &Server, req: &hyper::Request<hyper::body::Incoming>) -> Option<(u16, &'static str)> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(origin) = header("origin") {
        let host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if !is_loopback_host(host) {
            return Some((
                403,
                "forbidden: requests from web pages of other sites are refused (Origin is not loopback)",
            ));
        }
    }
    match &server.token {
        Some(want) => {
            let given = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).map(digest);
            if given.as_ref() != Some(want) {
                return Some((401, "unauthorized: send Authorization: Bearer <mcp-token>"));
            }
        }
        None => {
            if !header("host").is_some_and(is_loopback_host) {
                return Some((
                    403,
                    "forbidden: the Host header must name a loopback address (set mcp-token to serve others)",
                ));
            }
        }
    }
    None
}

/// Starts the MCP server on `addr`; its tools read the config file at `config`
/// (expanding `$VAR`s in it unless `expand_env` is false, as the daemon did).
pub fn serve(addr: &str, token: Option<&str>, config: PathBuf, expand_env: bool) -> Result<SocketAddr> {
    let token = token.filter(|t| !t.is_empty());
    let listener = crate::background::bind_tcp("mcp-addr", &listen_addr(addr, token.is_some())?)?;
    let local = listener.local_addr()?;
    let exe = std::env::current_exe().map_err(|e| anyhow!("cannot find the sluice binary for MCP tools: {e}"))?;
    let server = Arc::new(Server { config, expand_env, exe, token: token.map(digest) });
    let server_has_token = token.is_some();
    let listener = crate::background::Listener::Tcp(listener);
    crate::background::serve_http("mcp", listener, move |req| handle(server.clone(), req))?;
    let auth = if server_has_token { "bearer token required" } else { "loopback only" };
    info!(addr = %local, auth, "serving MCP (streamable HTTP) at /");
    Ok(local)
}

type Body = http_body_util::Full<bytes::Bytes>;

fn respond(status: u16, body: Option<Value>) -> Result<hyper::Response<Body>, hyper::http::Error> {
    let b = hyper::Response::builder().status(status);
    match body {
        Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())),
        None => b.body(Body::default()),
    }
}

async fn handle(
    server: Arc<Server>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Body>, hyper::http::Error> {
    use http_body_util::BodyExt;
    if req.uri().path() != "/" {
        return respond(404, Some(json!({"error": "not found: the MCP endpoint is /"})));
    }
    if let Some((status, why)) = refuse(&server, &req) {
        return respond(status, Some(json!({"error": why})));
    }
    if req.method() != hyper::Method::POST {
        return respond(405, Some(json!({"error": "POST JSON-RPC messages to /; there is no event stream"})));
    }
    let Ok(body) = http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await else {
        return respond(
            413,
            Some(rpc_error(Value::Null, -32700, "the request body is too large or unreadable (at most 1 MiB)")),
        );
    };
    let msg: Value = match serde_json::from_slice(&body.to_bytes()) {
        Ok(v) => v,
        Err(e) => return respond(400, Some(rpc_error(Value::Null, -32700, &format!("parse error: {e}")))),
    };
    let Some(id) = msg.get("id").cloned() else {
        return respond(202, None); // a notification (or a response): nothing to answer
    };
    let method = msg["method"].as_str().unwrap_or_default().to_string();
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let answer = match method.as_str() {
        "initialize" => Ok(json!({
            "protocolVersion": params["protocolVersion"].as_str().unwrap_or(PROTOCOL_VERSION),
            "capabilities": {"tools": {"listChanged": false}},
            "serverInfo": {"name": "sluice", "version": env!("CARGO_PKG_VERSION")},
        })),
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": TOOLS.iter().map(describe).collect::<Vec<_>>()})),
        "tools/call" => {
            let server = server.clone();
            match tokio::task::spawn_blocking(move || call(&server, &params)).await {
                Ok(r) => r,
                Err(e) => Err((-32603, format!("tool call failed: {e}"))),
            }
        }
        other => Err((-32601, format!("method not found: {other}"))),
    };
    let body = match answer {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err((code, message)) => rpc_error(id, code, &message),
    };
    respond(200, Some(body))
}

fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn describe(t: &Tool) -> Value {
    let properties: serde_json::Map<String, Value> =
        t.args.iter().map(|(n, d, _)| (n.to_string(), json!({"type": "string", "description": d}))).collect();
    let required: Vec<&str> = t.args.iter().filter(|a| a.2).map(|a| a.0).collect();
    json!({
        "name": t.name,
        "description": t.description,
        "inputSchema": {"type": "object", "properties": properties, "required": required},
    })
}

/// Runs a tool: its command, with `-config` for the commands that read one. A
/// command that fails is a tool result with `isError` (the model sees why).
/// The command line a `tools/call` message's `params` asks for, or the JSON-RPC
/// error to answer; the arguments of the command, never a shell line.
pub fn tool_argv(params: &Value) -> Result<Vec<String>, (i64, String)> {
    tool_call(params).map(|(_, argv)| argv)
}

/// The tool `params` names, and its command line.
fn tool_call(params: &Value) -> Result<(&'static Tool, Vec<String>), (i64, String)> {
    let name = params["name"].as_str().unwrap_or_default();
    let tool = TOOLS.iter().find(|t| t.name == name).ok_or_else(|| (-32602, format!("unknown tool {name:?}")))?;
    let args = params.get("arguments").cloned().unwrap_or(json!({}));
    Ok((tool, (tool.command)(&args).map_err(|m| (-32602, m))?))
}

fn call(server: &Server, params: &Value) -> Result<Value, (i64, String)> {
    let (tool, mut argv) = tool_call(params)?;
    if argv[0] != "version" {
        argv.insert(1, "-config".into());
        argv.insert(2, server.config.display().to_string());
        if !server.expand_env {
            argv.insert(3, "-no-expand-env".into());
        }
    }
    let out = std::process::Command::new(&server.exe)
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| (-32603, format!("cannot run sluice {}: {e}", argv[0])))?;
    let mut text = String::new();
    if tool.name == "litestream_info" {
        let mut info = crate::daemon::process_info();
        info.insert("config".into(), server.config.display().to_string().into());
        text.push_str(&format!("{}\n", Value::Object(info)));
    }
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(json!({"content": [{"type": "text", "text": text}], "isError": !out.status.success()}))
}

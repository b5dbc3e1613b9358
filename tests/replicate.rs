//! End to end: a writer process changes a database while `sluice replicate` runs;
//! `sluice restore` must give back exactly what the writer had.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use support::*;

/// Mixed workload (inserts, updates, deletes, a 2 MB blob, a 3000-row transaction,
/// VACUUM shrinking the file) written while replicating, with checkpoints forced
/// often; after a graceful stop the restore equals the source.
fn mixed_workload(page_size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", &page_size.to_string()]);
    let cfg = dir.path().join("sluice.yml");
    write_config(&cfg, &db, &file_url(&replica), "    min-checkpoint-page-count: 200\n");
    let daemon = Daemon::with_config(&cfg, &dir.path().join("log"));
    write(&db, &["steps", "0", "16"]);
    wait_replica_settled(&replica, Duration::from_millis(300));
    let log = daemon.stop();
    assert!(log.contains("checkpoint"), "the workload should have triggered checkpoints:\n{log}");
    let expected = digest(&db);
    assert!(expected.rows > 1000);
    restore_and_check(&[&file_url(&replica)], &dir.path().join("restored.db"), expected);
}

#[test]
fn mixed_workload_page_size_512() {
    mixed_workload(512);
}

#[test]
fn mixed_workload_page_size_4096() {
    mixed_workload(4096);
}

#[test]
fn mixed_workload_page_size_65536() {
    mixed_workload(65536);
}

/// Restores at recorded TXIDs and timestamps give exactly the writer's state then.
#[test]
fn point_in_time_by_txid_and_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("sluice.yml");
    write_config(&cfg, &db, &file_url(&replica), "");
    let daemon = Daemon::with_config(&cfg, &dir.path().join("log"));
    let mut points = Vec::new();
    for step in 0..8 {
        write(&db, &["step", &step.to_string()]);
        let (txid, d) = loop {
            let txid = wait_caught_up(&db, &replica);
            let d = digest(&db);
            if replica_caught_up(&db, &replica) && replica_l0_max(&replica) == txid {
                break (txid, d);
            }
        };
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        points.push((txid, at, d));
        sleep(Duration::from_millis(30));
    }
    daemon.stop();
    let url = file_url(&replica);
    for (i, (txid, at, d)) in points.iter().enumerate() {
        let txid = format!("{txid:016x}");
        restore_and_check(&["-txid", &txid, &url], &dir.path().join(format!("txid-{i}.db")), *d);
        restore_and_check(&["-timestamp", at, &url], &dir.path().join(format!("ts-{i}.db")), *d);
    }
    // The states really differ, so the restores above could not all pass by accident.
    assert_ne!(points[0].2, points[7].2);
}

/// The application checkpoints with TRUNCATE (and its last connection removes the
/// WAL) while sluice is stopped; on restart sluice must notice and snapshot.
#[test]
fn application_checkpoint_while_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("sluice.yml");
    write_config(&cfg, &db, &file_url(&replica), "");
    let log = dir.path().join("log");
    let d = Daemon::with_config(&cfg, &log);
    write(&db, &["steps", "0", "4"]);
    wait_replica_settled(&replica, Duration::from_millis(250));
    d.stop();

    // While stopped: more writes, a TRUNCATE checkpoint, and more writes after it.
    write(&db, &["step", "4"]);
    write(&db, &["checkpoint-truncate"]);
    write(&db, &["step", "5"]);
    write(&db, &["step", "7"]);

    let d = Daemon::with_config(&cfg, &log);
    wait_replica_settled(&replica, Duration::from_millis(300));
    let log = d.stop();
    assert!(log.contains("wrote snapshot"), "a changed WAL must lead to a snapshot:\n{log}");
    restore_and_check(&[&file_url(&replica)], &dir.path().join("restored.db"), digest(&db));
}

/// An idle database costs nothing: no new local or replica files.
#[test]
fn idle_database_writes_nothing() {
    let s = Setup::new();
    let replica = &s.replica;
    let d = s.daemon();
    write(&s.db, &["step", "0"]);
    let txid = wait_caught_up(&s.db, replica);
    let count = |p: &Path| fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let local = s.path(".app.db-litestream/ltx/0");
    let (l0, r0) = (count(&local), count(&replica.join("ltx/0")));
    sleep(Duration::from_secs(2)); // 40 monitor and sync intervals
    assert_eq!(replica_l0_max(replica), txid);
    assert_eq!((count(&local), count(&replica.join("ltx/0"))), (l0, r0));
    d.stop();
}

/// A database over 1 GiB crosses SQLite's lock page; it replicates and restores intact.
#[test]
fn database_over_one_gib_crosses_the_lock_page() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("sluice.yml");
    write_config(&cfg, &db, &file_url(&replica), "");
    let d = Daemon::with_config(&cfg, &dir.path().join("log"));
    write(&db, &["bigfill", "1100"]);
    wait_replica_settled(&replica, Duration::from_millis(500));
    d.stop();
    let size = fs::metadata(&db).unwrap().len() + fs::metadata(dir.path().join("big.db-wal")).map_or(0, |m| m.len());
    let pages: i64 = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    assert!(
        pages > sluice::ltx::lock_pgno(4096) as i64,
        "database must extend past the lock page ({pages} pages, {size} bytes)"
    );
    let out = dir.path().join("restored.db");
    restore_and_check(&[&file_url(&replica)], &out, digest(&db));
    assert_eq!(fs::metadata(&out).unwrap().len(), pages as u64 * 4096);
}

/// `-exec` (and `exec:` in the config): sluice runs the application, passes
/// SIGTERM on to it, and when it exits does the final sync and exits with the
/// application's status; what the application wrote, even while stopping, is in
/// the replica.
#[test]
fn exec_runs_the_application_and_stops_with_it() {
    let s = Setup::new();
    let dbs = s.db.to_str().unwrap();

    // The application writes and exits 0: sluice exits 0 after the final sync.
    let app = format!("python3 '{}' '{dbs}' steps 0 6", writer_script().display());
    let o = sluice(&["replicate", "-exec", &app, dbs, &s.url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    restore_and_check(&[&s.url], &s.path("r1.db"), digest(&s.db));

    // An application that fails: its exit status becomes sluice's.
    let o = sluice(&["replicate", "-exec", "python3 -c 'import sys; sys.exit(3)'", dbs, &s.url]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    assert_one_line_error(&o, "exited with status 3");

    // exec: in the config; SIGTERM goes to the application, which writes a last
    // row as it stops; sluice waits for it, syncs, and exits 0.
    let script = s.path("app.py");
    let app_py = r#"import signal, sqlite3, sys, time
def stop(*_):
    c = sqlite3.connect(sys.argv[1])
    c.execute("CREATE TABLE IF NOT EXISTS shutdown(at)")
    c.execute("INSERT INTO shutdown VALUES ('stopped')")
    c.commit()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
time.sleep(60)
"#;
    fs::write(&script, app_py).unwrap();
    s.top_level(&format!("exec: python3 '{}' '{dbs}'\n", script.display()));
    let d = s.daemon();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(s.path("log")).unwrap_or_default().contains("ready") {
        assert!(std::time::Instant::now() < deadline, "the application did not start");
        sleep(Duration::from_millis(50));
    }
    let log = d.stop();
    assert!(log.contains("signal passed to the application"), "{log}");
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    let at: String = conn.query_row("SELECT at FROM shutdown", [], |r| r.get(0)).unwrap();
    assert_eq!(at, "stopped");
    drop(conn);
    restore_and_check(&[&s.url], &s.path("r2.db"), digest(&s.db));

    let o = sluice(&["replicate", "-once", "-exec", "true", dbs, &s.url]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}

/// The daemon runs with glibc's thread caches off (it executes itself again with
/// `GLIBC_TUNABLES` set, see `daemon::memory`), yet the application it starts with
/// `-exec` gets the environment sluice was given: no variable added, the caller's
/// own `GLIBC_TUNABLES` as it was, or none.
#[test]
fn the_daemon_runs_without_thread_caches_and_its_application_gets_the_callers_environment() {
    let s = Setup::new();
    let dbs = s.db.to_str().unwrap();
    // The application writes what its parent (sluice) started with, and its own.
    let script = s.path("env.py");
    let env_py = r#"import os, sys
parent = open(f"/proc/{os.getppid()}/environ", "rb").read().replace(b"\0", b"\n")
open(sys.argv[1], "wb").write(parent)
open(sys.argv[2], "w").write("".join(f"{k}={v}\n" for k, v in os.environ.items()))
"#;
    fs::write(&script, env_py).unwrap();
    let app = format!(
        "python3 '{}' '{}' '{}'",
        script.display(),
        s.path("parent.env").display(),
        s.path("child.env").display()
    );
    for callers in [None, Some("glibc.malloc.mxfast=64")] {
        let env: Vec<(&str, &str)> = callers.map(|t| ("GLIBC_TUNABLES", t)).into_iter().collect();
        let o = sluice_with(&["replicate", "-exec", &app, dbs, &s.url], &env);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let parent = fs::read_to_string(s.path("parent.env")).unwrap();
        let child = fs::read_to_string(s.path("child.env")).unwrap();
        let tunables = |env: &str| env.lines().find_map(|l| l.strip_prefix("GLIBC_TUNABLES=")).map(str::to_string);
        // The setting as the daemon started with it (glibc writes a NUL after each
        // value it reads, so a setting after the caller's shows on a line of its own).
        assert!(parent.contains("glibc.malloc.tcache_count=0"), "the daemon's own environment:\n{parent}");
        if let Some(t) = callers {
            assert_eq!(tunables(&parent).as_deref(), Some(t), "the caller's settings, kept:\n{parent}");
        }
        assert_eq!(tunables(&child).as_deref(), callers, "the application's environment:\n{child}");
        assert!(
            !child.contains("SLUICE_CALLERS_GLIBC_TUNABLES"),
            "sluice's own variable leaked to the application:\n{child}"
        );
    }
    restore_and_check(&[&s.url], &s.path("r.db"), digest(&s.db));
}

/// `mcp-addr:` serves MCP over HTTP: `initialize`, `tools/list` with Litestream's
/// tool names, and tools that run sluice's commands with the daemon's config: the
/// databases, and a restore that equals the source. Bad calls get JSON-RPC errors or
/// a tool error saying why.
#[test]
fn mcp_server_lists_and_restores() {
    let s = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    s.top_level(&format!("mcp-addr: 127.0.0.1:{port}\n"));
    let d = s.daemon();
    write(&s.db, &["steps", "0", "3"]);
    wait_caught_up(&s.db, &s.replica);
    let http = |method: &str, body: &str| -> (u16, String) {
        raw_http(port, method, "Host: localhost\r\nAccept: application/json, text/event-stream\r\n", body.as_bytes())
    };
    let rpc = |id: u32, method: &str, params: serde_json::Value| -> serde_json::Value {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        let (status, text) = http("POST", &body);
        assert_eq!(status, 200, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], id);
        v
    };

    let init = rpc(
        1,
        "initialize",
        serde_json::json!({"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
    );
    assert_eq!(init["result"]["serverInfo"]["name"], "sluice");
    assert_eq!(init["result"]["protocolVersion"], "2025-03-26");
    assert!(init["result"]["capabilities"]["tools"].is_object());
    assert_eq!(http("POST", r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).0, 202);
    let tools = rpc(2, "tools/list", serde_json::json!({}));
    let names: Vec<&str> =
        tools["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for n in [
        "litestream_info",
        "litestream_databases",
        "litestream_restore",
        "litestream_ltx",
        "litestream_version",
        "litestream_status",
        "litestream_reset",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }

    let dbs = rpc(3, "tools/call", serde_json::json!({"name": "litestream_databases", "arguments": {}}));
    assert_eq!(dbs["result"]["isError"], false, "{dbs}");
    assert!(dbs["result"]["content"][0]["text"].as_str().unwrap().contains(s.db.to_str().unwrap()), "{dbs}");

    let out = s.path("mcp-restored.db");
    let args = serde_json::json!({"path": s.db.to_str().unwrap(), "o": out.to_str().unwrap()});
    let r = rpc(4, "tools/call", serde_json::json!({"name": "litestream_restore", "arguments": args}));
    assert_eq!(r["result"]["isError"], false, "{r}");
    integrity_ok(&out);
    assert_eq!(digest(&out), digest(&s.db), "the MCP restore equals the source");
    // The same again: the output exists, so the tool fails and says so.
    let r = rpc(5, "tools/call", serde_json::json!({"name": "litestream_restore", "arguments": args}));
    assert_eq!(r["result"]["isError"], true, "{r}");
    assert!(r["result"]["content"][0]["text"].as_str().unwrap().contains("already exists"), "{r}");
    // A value that would read as a flag, a missing argument, an unknown tool or method.
    let flag = serde_json::json!({"path": s.db.to_str().unwrap(), "o": "-force"});
    let r = rpc(6, "tools/call", serde_json::json!({"name": "litestream_restore", "arguments": flag}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    let r = rpc(7, "tools/call", serde_json::json!({"name": "litestream_restore", "arguments": {"path": "x"}}));
    assert!(r["error"]["message"].as_str().unwrap().contains("argument o is required"), "{r}");
    assert_eq!(rpc(8, "tools/call", serde_json::json!({"name": "nope"}))["error"]["code"], -32602);
    assert_eq!(rpc(9, "resources/list", serde_json::json!({}))["error"]["code"], -32601);
    assert_eq!(http("GET", "").0, 405);
    d.stop();
}

/// `addr:` serves Prometheus metrics under Litestream's names: after some writes,
/// the captured and the replicated TXIDs equal the replica's newest file, and the
/// replica's PUTs are counted.
#[test]
fn metrics_endpoint_reports_progress() {
    let s = Setup::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    s.top_level(&format!("addr: 127.0.0.1:{port}\n"));
    let d = s.daemon();
    write(&s.db, &["steps", "0", "4"]);
    let newest = wait_caught_up(&s.db, &s.replica);
    let get = |path: &str| http_get(port, path);
    let db_label = format!("db=\"{}\"", s.db.display());
    let newest = newest as f64;
    assert!(newest > 1.0);
    // The replica's TXID is noted once the replica pass that uploaded it ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        let page = get("/metrics");
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        let needle = format!("sluice_replica_txid{{{db_label}}} {newest}");
        if page.lines().any(|l| l == needle) || std::time::Instant::now() > deadline {
            break page;
        }
        sleep(Duration::from_millis(50));
    };
    let value = |name: &str, labels: &[&str]| -> f64 {
        page.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{page}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("litestream_txid", &[&db_label]), newest);
    assert_eq!(value("sluice_replica_txid", &[&db_label]), newest);
    assert!(value("litestream_sync_count", &[&db_label]) >= 1.0);
    assert_eq!(value("litestream_sync_error_count", &[&db_label]), 0.0);
    assert!(value("litestream_db_size", &[&db_label]) > 0.0);
    assert!(value("litestream_replica_operation_total", &["replica_type=\"file\"", "operation=\"PUT\""]) >= 1.0);
    assert!(value("litestream_replica_operation_bytes", &["replica_type=\"file\"", "operation=\"PUT\""]) > 0.0);
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    d.stop();
}

/// Litestream's local commands: `databases` lists the config's databases,
/// `status` shows local state without contacting the replica, and `reset` deletes
/// the local LTX files, after which replication resumes and restores stay correct.
#[test]
fn databases_status_and_reset() {
    let s = Setup::new();
    let (db, replica, url) = (&s.db, &s.replica, &s.url);
    let (dbs, cfgs) = (db.to_str().unwrap(), s.cfg.to_str().unwrap());
    let stdout = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    assert_eq!(stdout(&sluice(&["databases", "-config", cfgs])), format!("path\treplica\n{dbs}\tfile\n"));
    let j: serde_json::Value =
        serde_json::from_str(&stdout(&sluice(&["databases", "-json", "-config", cfgs]))).unwrap();
    assert_eq!(j, serde_json::json!([{"path": dbs, "replica": "file"}]));
    assert!(stdout(&sluice(&["status", "-config", cfgs])).contains(&format!("{dbs}\tnot initialized\t-\t")));

    write(db, &["steps", "0", "3"]);
    stdout(&sluice(&["replicate", "-once", "-config", cfgs]));
    let newest = replica_l0_max(replica);
    let st = stdout(&sluice(&["status", "-config", cfgs]));
    assert!(st.contains(&format!("{dbs}\tok\t{newest:016x}\t")), "{st}");
    // A database named on the command line needs no config file.
    let j: serde_json::Value = serde_json::from_str(&stdout(&sluice(&["status", "-json", dbs]))).unwrap();
    assert_eq!(j[0]["status"], "ok");
    assert_eq!(j[0]["local_txid"], format!("{newest:016x}"));

    let meta = s.path(".app.db-litestream/ltx/0");
    let before = fs::read_dir(&meta).unwrap().count();
    assert!(stdout(&sluice(&["reset", "-dry-run", "-config", cfgs, dbs])).contains("would delete"));
    assert_eq!(fs::read_dir(&meta).unwrap().count(), before, "dry run deletes nothing");
    assert!(stdout(&sluice(&["reset", "-config", cfgs, dbs])).contains("deleted"));
    assert!(!meta.exists());
    assert!(stdout(&sluice(&["status", "-config", cfgs])).contains("not initialized"));

    write(db, &["steps", "3", "6"]);
    stdout(&sluice(&["replicate", "-once", "-config", cfgs]));
    restore_and_check(&[url], &s.path("r.db"), digest(db));
}

/// `heartbeat-url`: while every database syncs and its replica works, sluice sends
/// GET to the URL (first check 15 s after start, then every heartbeat-interval);
/// the URL, which often holds a secret token, never appears in the log.
#[test]
fn heartbeat_pings_while_healthy() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = hits.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let _ = reader.read_line(&mut line);
            seen.lock().unwrap().push(line.trim().to_string());
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let s = Setup::new();
    s.top_level(&format!("heartbeat-url: http://127.0.0.1:{port}/ping/secret-token-7f3a\nheartbeat-interval: 1m\n"));
    let d = s.daemon();
    write(&s.db, &["steps", "0", "2"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    while hits.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no heartbeat within 45 s");
        sleep(Duration::from_millis(200));
    }
    let log = d.stop();
    assert!(hits.lock().unwrap()[0].starts_with("GET /ping/secret-token-7f3a HTTP/1.1"), "{:?}", hits.lock().unwrap());
    assert!(!log.contains("secret-token"), "the heartbeat URL was logged:\n{log}");
    restore_and_check(&[&s.url], &s.path("r.db"), digest(&s.db));
}

/// `sluice.yml` in `dir` replicating every `*.db` under `data` to `replica`, with
/// extra keys for the `dbs:` entry and for its replica.
fn dir_config(dir: &Path, data: &Path, replica: &Path, entry_keys: &str, replica_keys: &str) -> std::path::PathBuf {
    let cfg = dir.join("sluice.yml");
    let text = format!(
        "dbs:\n  - dir: {}\n    pattern: \"*.db\"\n{entry_keys}    replica:\n      url: {}\n{replica_keys}",
        data.display(),
        file_url(replica)
    );
    fs::write(&cfg, text).unwrap();
    cfg
}

/// Directory replication: `dir:` with `pattern:` and `recursive:` replicates every
/// SQLite database found, each under its own relative path in the replica, and
/// skips files that do not match or are not SQLite databases.
#[test]
fn directory_replication() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let replica = dir.path().join("replica");
    fs::create_dir_all(data.join("tenants")).unwrap();
    let (a, b, other) = (data.join("a.db"), data.join("tenants/b.db"), data.join("c.sqlite"));
    for (db, steps) in [(&a, "3"), (&b, "5"), (&other, "1")] {
        write(db, &["init", "4096"]);
        write(db, &["steps", "0", steps]);
    }
    fs::write(data.join("notes.db"), "not a database").unwrap();
    let cfg = dir_config(dir.path(), &data, &replica, "    recursive: true\n", "");
    let cfgs = cfg.to_str().unwrap();
    let o = sluice(&["replicate", "-once", "-config", cfgs]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    restore_and_check(&[&file_url(&replica.join("a.db"))], &dir.path().join("ra.db"), digest(&a));
    restore_and_check(&[&file_url(&replica.join("tenants/b.db"))], &dir.path().join("rb.db"), digest(&b));
    assert!(!replica.join("notes.db").exists() && !replica.join("c.sqlite").exists());
    let o = sluice(&["databases", "-config", cfgs]);
    let list = String::from_utf8_lossy(&o.stdout);
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains(&format!("{}\tfile", b.display())), "{list}");
    // A database found under dir: is restored by its path, like any other.
    restore_and_check(&["-config", cfgs, b.to_str().unwrap()], &dir.path().join("by-path.db"), digest(&b));
}

/// The control socket: with `sync-interval: 1h` holding uploads back, `sluice sync
/// -wait` makes the running daemon capture and upload at once, and reports the
/// TXIDs; `list` and `info` describe the daemon; an unknown database is an error;
/// `register` and `unregister` add and remove databases while it runs; `stop` and
/// `start` pause and resume one.
#[test]
fn control_socket_sync_wait() {
    let s = Setup::new();
    let sock = s.path("sluice.sock");
    let text = fs::read_to_string(&s.cfg).unwrap().replace("sync-interval: 50ms", "sync-interval: 1h");
    fs::write(&s.cfg, text).unwrap();
    s.top_level(&format!("socket:\n  enabled: true\n  path: {}\n  permissions: 0600\n", sock.display()));
    let d = s.daemon();
    let socks = sock.to_str().unwrap();
    let run = |args: &[&str]| {
        let o = sluice(args);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while replica_l0_max(&s.replica) == 0 {
        assert!(std::time::Instant::now() < deadline, "the first upload did not happen");
        sleep(Duration::from_millis(50));
    }
    let first = replica_l0_max(&s.replica);
    write(&s.db, &["steps", "0", "3"]);
    sleep(Duration::from_millis(500));
    assert_eq!(replica_l0_max(&s.replica), first, "sync-interval 1h holds the upload back");

    let dbs = s.db.to_str().unwrap();
    let out = run(&["sync", "-wait", "-socket", socks, dbs]);
    let newest = replica_l0_max(&s.replica);
    assert!(newest > first, "sync -wait uploaded: {out}");
    assert!(out.contains(&format!("txid: {newest:016x}")), "{out}");
    assert!(out.contains(&format!("replicated_txid: {newest:016x}")), "{out}");

    let list = run(&["list", "-socket", socks]);
    assert!(list.contains(&format!("{dbs}\treplicating\t")), "{list}");
    let info: serde_json::Value = serde_json::from_str(&run(&["info", "-json", "-socket", socks])).unwrap();
    assert_eq!(info["database_count"], 1);
    let o = sluice(&["sync", "-socket", socks, "/not/replicated.db"]);
    assert_one_line_error(&o, "database not found");

    // register adds a database to the running daemon; unregister takes it out
    // after a final sync that leaves its replica complete.
    let other = s.path("other.db");
    let other_replica = s.path("other-replica");
    write(&other, &["init", "4096"]);
    let others = other.to_str().unwrap();
    run(&["register", "-socket", socks, "-replica", &file_url(&other_replica), others]);
    let o = sluice(&["register", "-socket", socks, "-replica", &file_url(&other_replica), others]);
    assert_one_line_error(&o, "already being replicated");
    write(&other, &["steps", "0", "2"]);
    let out = run(&["sync", "-wait", "-socket", socks, others]);
    assert!(out.contains(&format!("replicated_txid: {:016x}", replica_l0_max(&other_replica))), "{out}");
    assert!(run(&["list", "-socket", socks]).contains(others));
    write(&other, &["steps", "2", "4"]);
    // stop keeps it listed as stopped; start resumes it from its replica URL.
    run(&["stop", "-socket", socks, others]);
    assert!(run(&["list", "-socket", socks]).contains(&format!("{others}\tstopped")));
    write(&other, &["steps", "4", "5"]);
    run(&["start", "-socket", socks, others]);
    assert_one_line_error(&sluice(&["start", "-socket", socks, others]), "already being replicated");
    run(&["unregister", "-socket", socks, others]);
    assert!(!run(&["list", "-socket", socks]).contains(others));
    restore_and_check(&[&file_url(&other_replica)], &s.path("other-r.db"), digest(&other));

    // A database from the config file stops and starts again (rebuilt from the config).
    run(&["stop", "-socket", socks, dbs]);
    write(&s.db, &["steps", "3", "5"]);
    run(&["start", "-socket", socks, dbs]);
    let out = run(&["sync", "-wait", "-socket", socks, dbs]);
    assert!(out.contains(&format!("replicated_txid: {:016x}", replica_l0_max(&s.replica))), "{out}");

    d.stop();
    restore_and_check(&[&s.url], &s.path("r.db"), digest(&s.db));
}

/// `watch: true`: a database created in the watched directory while sluice runs is
/// found and replicated without a restart, under its relative path.
#[test]
fn directory_watch_picks_up_new_databases() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let replica = dir.path().join("replica");
    fs::create_dir_all(&data).unwrap();
    let a = data.join("a.db");
    write(&a, &["init", "4096"]);
    let cfg = dir_config(
        dir.path(),
        &data,
        &replica,
        "    watch: true\n    monitor-interval: 50ms\n",
        "      sync-interval: 50ms\n",
    );
    let d = Daemon::with_config(&cfg, &dir.path().join("log"));
    write(&a, &["steps", "0", "2"]);
    let late = data.join("late.db");
    write(&late, &["init", "4096"]);
    write(&late, &["steps", "0", "3"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while replica_l0_max(&replica.join("late.db")) == 0 {
        assert!(std::time::Instant::now() < deadline, "the new database was not picked up");
        sleep(Duration::from_millis(100));
    }
    wait_replica_settled(&replica.join("late.db"), Duration::from_millis(500));
    wait_replica_settled(&replica.join("a.db"), Duration::from_millis(300));
    let log = d.stop();
    assert!(log.contains("new database found"), "{log}");
    restore_and_check(&[&file_url(&replica.join("a.db"))], &dir.path().join("ra.db"), digest(&a));
    restore_and_check(&[&file_url(&replica.join("late.db"))], &dir.path().join("rl.db"), digest(&late));
}

/// On a terminal, a restore or verify of more than a few MB shows a progress bar
/// (bytes, files, rate, ETA). There is none when stderr is not a terminal, and
/// none with -json. The terminal is a pseudo-terminal made by script(1).
#[test]
fn restores_show_progress_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    write(&db, &["init", "4096"]);
    write(&db, &["randomfill", "8"]);
    let replica = dir.path().join("replica");
    let url = file_url(&replica);
    let o = sluice(&["replicate", "-once", db.to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let on_a_terminal = |args: &str| -> String {
        let cmd = format!("{} {args}", sluice_bin());
        let o = bounded_output(std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]), &cmd);
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let out = dir.path().join("out.db");
    let shown = on_a_terminal(&format!("restore -o {} {url}", out.display()));
    assert!(
        shown.contains("restoring [") && shown.contains("MiB") && shown.contains("1/1 files") && shown.contains("ETA"),
        "{shown}"
    );
    assert_eq!(digest(&out), digest(&db));
    let shown = on_a_terminal(&format!("verify {url}"));
    assert!(shown.contains("verifying [") && shown.contains("ok: "), "{shown}");
    let shown = on_a_terminal(&format!("verify -json {url}"));
    assert!(!shown.contains("verifying ["), "no bar with -json: {shown}");
    // Not a terminal: no bar.
    let o = sluice(&["restore", "-o", dir.path().join("out2.db").to_str().unwrap(), &url]);
    assert!(o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).contains("restoring ["), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `-config -` reads the config from standard input (Litestream's newer form), as
/// a file would be read; a bad one is a one-line error naming standard input.
#[test]
fn config_from_standard_input() {
    use std::io::Write as _;
    let s = Setup::new();
    write(&s.db, &["step", "1"]);
    let run = |text: &str| {
        let mut child = std::process::Command::new(sluice_bin())
            .args(["replicate", "-once", "-config", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let o = run(&fs::read_to_string(&s.cfg).unwrap());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = s.path("restored.db");
    restore_and_check(&[&s.url], &out, digest(&s.db));
    let o = run("dbs: [\n");
    let err = assert_one_line_error(&o, "standard input");
    assert!(err.contains("invalid config"), "{err}");
}

/// Litestream 0.5's newer keys have their effect: `meta-dir` puts the state of
/// every database of a `dir:` entry under one directory, `logging.source` names
/// the source file and line in every log line.
#[test]
fn meta_dir_and_logging_source() {
    let dir = tempfile::tempdir().unwrap();
    let dbs = dir.path().join("dbs");
    fs::create_dir_all(&dbs).unwrap();
    for name in ["a.db", "b.db"] {
        write(&dbs.join(name), &["init", "4096"]);
        write(&dbs.join(name), &["step", "1"]);
    }
    let meta = dir.path().join("state");
    let cfg = dir.path().join("sluice.yml");
    fs::write(
        &cfg,
        format!(
            "logging:\n  source: true\ndbs:\n  - dir: {}\n    pattern: \"*.db\"\n    meta-dir: {}\n    replica:\n      url: {}\n",
            dbs.display(),
            meta.display(),
            file_url(&dir.path().join("replica"))
        ),
    )
    .unwrap();
    let o = sluice(&["replicate", "-once", "-config", cfg.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    for name in ["a.db", "b.db"] {
        let state = meta.join(format!(".{name}-litestream/ltx/0"));
        assert!(fs::read_dir(&state).is_ok_and(|mut d| d.next().is_some()), "no state in {}", state.display());
        assert!(!dbs.join(format!(".{name}-litestream")).exists(), "state written next to {name} despite meta-dir");
    }
    assert!(log.lines().any(|l| l.contains("replicated once") && l.contains(".rs:")), "no source in:\n{log}");
}

/// The bytes of a database and its side files, exactly.
fn files_of(db: &Path) -> Vec<(String, Option<Vec<u8>>)> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| {
            let p = PathBuf::from(format!("{}{s}", db.display()));
            (s.to_string(), fs::read(&p).ok())
        })
        .collect()
}

/// `restore -force` over an existing database never destroys it: a restore that
/// fails mid-way (a damaged replica file) leaves the old database, its WAL with a
/// committed row not yet checkpointed, and its shared-memory file byte for byte as
/// they were. Once the replica is whole again, the same command replaces it: the
/// result is the source exactly, and no old WAL is left beside it.
#[test]
fn restore_force_keeps_the_old_database_until_the_new_one_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    write(&db, &["steps", "0", "6"]);
    let replica = dir.path().join("replica");
    let url = file_url(&replica);
    let o = sluice(&["replicate", "-once", db.to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    write(&db, &["steps", "6", "9"]);
    let o = sluice(&["replicate", "-once", db.to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The user's database: another one, with a committed row still in its WAL.
    let mine = dir.path().join("mine.db");
    write(&mine, &["init", "4096"]);
    write(&mine, &["steps", "0", "2"]);
    write(&mine, &["commit-and-die"]);
    let before = files_of(&mine);
    assert!(before[1].1.as_ref().is_some_and(|w| !w.is_empty()), "the WAL holds a row");
    // Its content, read from a copy (a reader may write to the -shm file).
    let copy = dir.path().join("copy.db");
    for (suffix, bytes) in &before {
        if let Some(b) = bytes {
            fs::write(format!("{}{suffix}", copy.display()), b).unwrap();
        }
    }
    let mine_digest = digest(&copy);
    assert!(mine_digest.rows > 0);

    // Damage the newest level-0 file: the restore fails, and nothing of mine changed.
    let newest = fs::read_dir(replica.join("ltx/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| p.file_name().unwrap().to_os_string())
        .unwrap();
    let good = fs::read(&newest).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    fs::write(&newest, &bad).unwrap();
    let o = sluice(&["restore", "-force", "-o", mine.to_str().unwrap(), &url]);
    assert_one_line_error(&o, "restore to");
    assert_eq!(files_of(&mine), before, "a failed restore left the old database and its side files untouched");
    assert_eq!(digest(&mine), mine_digest);

    // Whole again: -force replaces it with the source's state, and no old WAL stays.
    fs::write(&newest, &good).unwrap();
    let o = sluice(&["restore", "-force", "-o", mine.to_str().unwrap(), &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for side in ["-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{side}", mine.display()));
        assert!(!p.exists(), "{} is left beside the new database", p.display());
    }
    integrity_ok(&mine);
    assert_eq!(digest(&mine), digest(&db));
}

/// A raw HTTP/1.1 request to 127.0.0.1:`port` with extra header lines; returns
/// (status, body). Retries the connection while the server starts.
fn raw_http(port: u16, method: &str, headers: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => assert!(std::time::Instant::now() < deadline, "server not listening: {e}"),
        }
        sleep(Duration::from_millis(50));
    };
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} / HTTP/1.1\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).unwrap();
    let _ = conn.write_all(body);
    let mut text = Vec::new();
    let _ = conn.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// MCP's tools reset and restore databases, so its surface is closed: `:PORT`
/// without a token serves loopback only; a non-loopback address without a token
/// is refused at start; a request whose Host or Origin is not loopback (DNS
/// rebinding, a web page) is refused; with `mcp-token` every request needs the
/// bearer token; bodies over 1 MiB are refused. The token never reaches the log.
#[test]
fn mcp_surface_is_closed() {
    let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let s = Setup::new();
    let p = port();
    s.top_level(&format!("mcp-addr: \":{p}\"\n"));
    let d = s.daemon();
    d.wait_for_log("serving MCP", Duration::from_secs(30));
    let local = "Host: localhost\r\n";
    assert_eq!(raw_http(p, "POST", local, ping).0, 200);
    assert_eq!(raw_http(p, "POST", &format!("Host: 127.0.0.1:{p}\r\n"), ping).0, 200);
    assert_eq!(raw_http(p, "POST", "Host: attacker.example\r\n", ping).0, 403, "DNS rebinding: foreign Host");
    assert_eq!(raw_http(p, "POST", "Host: localhost\r\nOrigin: http://attacker.example\r\n", ping).0, 403);
    assert_eq!(raw_http(p, "POST", &format!("Host: localhost\r\nOrigin: http://localhost:{p}\r\n"), ping).0, 200);
    let big = vec![b' '; (1 << 20) + 10];
    assert_eq!(raw_http(p, "POST", local, &big).0, 413, "a body over 1 MiB");
    let log = d.stop();
    assert!(log.contains(&format!("127.0.0.1:{p}")) && log.contains("loopback only"), "{log}");

    // A non-loopback address without a token: refused at start, naming the fix.
    let s = Setup::new();
    s.top_level(&format!("mcp-addr: 0.0.0.0:{}\n", port()));
    let o = sluice(&["replicate", "-config", s.cfg.to_str().unwrap()]);
    let err = assert_one_line_error(&o, "mcp-token");
    assert!(err.contains("without authentication"), "{err}");

    // With a token: every request must carry it.
    let s = Setup::new();
    let p = port();
    s.top_level(&format!("mcp-addr: 127.0.0.1:{p}\nmcp-token: sekrit-token-123\n"));
    let d = s.daemon();
    d.wait_for_log("serving MCP", Duration::from_secs(30));
    assert_eq!(raw_http(p, "POST", local, ping).0, 401);
    assert_eq!(raw_http(p, "POST", "Host: localhost\r\nAuthorization: Bearer wrong\r\n", ping).0, 401);
    let (status, body) = raw_http(p, "POST", "Host: localhost\r\nAuthorization: Bearer sekrit-token-123\r\n", ping);
    assert_eq!(status, 200, "{body}");
    let log = d.stop();
    assert!(!log.contains("sekrit-token-123"), "the token reached the log:\n{log}");
}

/// The control socket is created with mode 0600 (nobody else can connect, not
/// even for an instant), and a request body over 1 MiB is refused.
#[test]
fn control_socket_is_private_and_bounded() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    let sock = s.path("ctl.sock");
    s.top_level(&format!("socket:\n  enabled: true\n  path: {}\n", sock.display()));
    let d = s.daemon();
    d.wait_for_log("control socket listening", Duration::from_secs(30));
    let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let leftovers: Vec<_> = fs::read_dir(sock.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".sluice-socket"))
        .collect();
    assert!(leftovers.is_empty(), "no staging directory is left");
    use std::io::{Read, Write};
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = vec![b' '; (1 << 20) + 10];
    let head = format!(
        "POST /sync HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    let _ = c.write_all(&body);
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    d.stop();
}

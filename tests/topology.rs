//! Replication topology, end to end on real servers: several replicas per
//! database (a file replica beside S3 on moto under the guide's read-write IAM
//! policy, or on s3s-fs), one of them failing for a while.

#[path = "support/s3.rs"]
mod s3_support;
mod support;

use std::fs;
use std::time::{Duration, Instant};

use s3_support::*;
use support::*;

const BUCKET: &str = "sluice-bucket";

/// The value of the Prometheus series `name{labels}` (labels as rendered), if any.
fn metric(port: u16, series: &str) -> Option<u64> {
    // Not up yet: no value.
    std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let text = http_get(port, "/metrics");
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()).map(|v| v as u64))
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stdout(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Two replicas: `local` (file://) and `offsite` (S3 on moto, the guide's
/// read-write policy), reached through a proxy that fails for a while. `local`
/// keeps up while `offsite` fails, and the metrics say which one is failing;
/// `restore` from the config then picks `local`, the replica holding the newest
/// TXID. Once S3 answers again `offsite` catches up, and each replica, chosen with
/// `-replica NAME`, restores equal to the source at the same TXID.
#[test]
fn two_replicas_one_failing_then_catching_up() {
    let moto = Moto::start(12);
    let users = moto.guide_users(BUCKET);
    let rw = users.iter().find(|u| u.0 == "readwrite").unwrap().clone();
    let proxy = FaultProxy::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let local = dir.path().join("local-replica");
    let port = free_port();
    let cfg = dir.path().join("sluice.yml");
    let sock = dir.path().join("sluice.sock");
    fs::write(
        &cfg,
        format!(
            "addr: 127.0.0.1:{port}\nshutdown-sync-timeout: 1s\nsocket:\n  enabled: true\n  path: {sock}\n\
             dbs:\n  - path: {db}\n    monitor-interval: 100ms\n    replicas:\n\
             \x20     - name: local\n        url: {local_url}\n        sync-interval: 100ms\n\
             \x20     - name: offsite\n        url: s3://{BUCKET}/app\n        endpoint: {endpoint}\n        region: us-east-1\n\
             \x20       access-key-id: {key}\n        secret-access-key: {secret}\n        sync-interval: 100ms\n",
            db = db.display(),
            local_url = file_url(&local),
            endpoint = proxy.endpoint(),
            sock = sock.display(),
            key = rw.1,
            secret = rw.2,
        ),
    )
    .unwrap();
    let cfgs = cfg.to_str().unwrap();
    let dbs = db.to_str().unwrap();
    let series = |name: &str, replica: &str| format!("{name}{{db=\"{dbs}\",replica=\"{replica}\"}} ");
    let txid = || metric(port, &format!("litestream_txid{{db=\"{dbs}\"}} "));

    // S3 fails from the start: the file replica does not wait for it.
    proxy.set_faulty(true);
    let d = Daemon::with_config(&cfg, &dir.path().join("log1"));
    write(&db, &["steps", "0", "6"]);
    wait_until_caught_up(|| replica_caught_up(&db, &local), "the file replica");
    wait_for("offsite to be reported failing", Duration::from_secs(60), || {
        metric(port, &series("sluice_replica_failing", "offsite")) == Some(1)
    });
    assert_eq!(metric(port, &series("sluice_replica_failing", "local")), Some(0));
    assert_eq!(metric(port, &series("sluice_replica_newest_txid", "local")), txid());
    let list = stdout(&sluice(&["databases", "-config", cfgs]));
    assert!(list.contains("file,s3"), "{list}");
    let status = stdout(&sluice(&["status", "-config", cfgs]));
    assert!(status.lines().nth(1).is_some_and(|l| l.ends_with("\tlocal,offsite")), "{status}");
    let list = stdout(&sluice(&["list", "-socket", sock.to_str().unwrap()]));
    let row = list.lines().find(|l| l.starts_with(dbs)).unwrap_or_default();
    assert!(row.contains("local=") && row.contains("offsite=0000000000000000 failing"), "{list}");
    // Stopped while S3 still fails: the final upload to it gives up (exit status 1).
    let (status, log) = d.stop_with_status();
    assert!(!status.success(), "the final upload to the failing replica must be reported:\n{log}");
    assert!(log.contains("offsite"), "the failing replica is named in the log:\n{log}");

    // Restore from the config: the replica with the newest TXID, `local`.
    let o = sluice(&["restore", "-config", cfgs, "-o", dir.path().join("newest.db").to_str().unwrap(), dbs]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&local.display().to_string()), "restored from local");
    integrity_ok(&dir.path().join("newest.db"));
    assert_eq!(digest(&dir.path().join("newest.db")), digest(&db));

    // S3 is back: offsite catches up with everything, old and new.
    proxy.set_faulty(false);
    let d = Daemon::with_config(&cfg, &dir.path().join("log2"));
    write(&db, &["steps", "6", "10"]);
    wait_until_caught_up(|| replica_caught_up(&db, &local), "the file replica");
    wait_for("offsite to catch up", Duration::from_secs(60), || {
        let t = txid();
        t.is_some() && metric(port, &series("sluice_replica_newest_txid", "offsite")) == t
    });
    assert_eq!(metric(port, &series("sluice_replica_failing", "offsite")), Some(0));
    let listed = stdout(&sluice(&["ltx", "-config", cfgs, "-level", "0", dbs]));
    assert!(listed.starts_with("replica\tlevel"), "{listed}");
    d.stop();

    let mut restored_at = Vec::new();
    for name in ["local", "offsite"] {
        let out = dir.path().join(format!("{name}.db"));
        let o = sluice(&[
            "restore",
            "-config",
            cfgs,
            "-replica",
            name,
            "-integrity-check",
            "full",
            "-json",
            "-o",
            out.to_str().unwrap(),
            dbs,
        ]);
        assert!(o.status.success(), "restore -replica {name}: {}", String::from_utf8_lossy(&o.stderr));
        integrity_ok(&out);
        assert_eq!(digest(&out), digest(&db), "replica {name} restores equal to the source");
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        restored_at.push(j["txid"].as_str().unwrap().to_string());
    }
    assert_eq!(restored_at[0], restored_at[1], "one TXID sequence for every replica");
    let o = sluice(&["restore", "-config", cfgs, "-replica", "nope", "-o", "/tmp/x.db", dbs]);
    let err = assert_one_line_error(&o, "no replica named \"nope\"");
    assert!(err.contains("local, offsite"), "{err}");
}

/// A replica that is down longer than its `backlog-limit` lets go of its backlog:
/// the other replica's retention goes on deleting local L0 files, one error line
/// names the replica and the limit, and once the replica answers again it continues
/// from a fresh snapshot and restores equal to the source.
#[test]
fn a_replica_past_its_backlog_limit_restarts_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("s3"));
    server.create_bucket(BUCKET);
    let proxy = FaultProxy::start(server.port);
    let db = new_db(dir.path());
    let local = dir.path().join("local-replica");
    let port = free_port();
    let cfg = dir.path().join("sluice.yml");
    fs::write(
        &cfg,
        format!(
            "addr: 127.0.0.1:{port}\nlevels:\n  - interval: 1s\nl0-retention: 1s\nl0-retention-check-interval: 200ms\n\
             dbs:\n  - path: {db}\n    monitor-interval: 100ms\n    replicas:\n\
             \x20     - name: local\n        url: {local_url}\n        sync-interval: 100ms\n\
             \x20     - name: offsite\n        url: s3://{BUCKET}/app?endpoint={endpoint}\n        sync-interval: 100ms\n\
             \x20       backlog-limit: 1KB\n",
            db = db.display(),
            local_url = file_url(&local),
            endpoint = proxy.endpoint(),
        ),
    )
    .unwrap();
    let env = credentials_env(proxy.endpoint());
    let dbs = db.to_str().unwrap();
    proxy.set_faulty(true);
    let d = Daemon::start_with(&["-config", cfg.to_str().unwrap()], &dir.path().join("log"), &env_refs(&env));
    write(&db, &["steps", "0", "6"]);
    wait_until_caught_up(|| replica_caught_up(&db, &local), "the file replica");
    d.wait_for_log("over its backlog-limit", Duration::from_secs(60));
    write(&db, &["steps", "6", "8"]);
    wait_until_caught_up(|| replica_caught_up(&db, &local), "the file replica");
    // `local` compacts and deletes its level 0 files, and their local copies go.
    let first_l0 = dir.path().join(".app.db-litestream/ltx/0/0000000000000001-0000000000000001.ltx");
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_l0.exists() {
        let log = || fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the first local L0 file was not deleted:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.set_faulty(false);
    d.wait_for_log("continues after a fresh snapshot", Duration::from_secs(60));
    write(&db, &["steps", "8", "10"]);
    wait_until_caught_up(|| replica_caught_up(&db, &local), "the file replica");
    let series = format!("sluice_replica_newest_txid{{db=\"{dbs}\",replica=\"offsite\"}} ");
    let txid = format!("litestream_txid{{db=\"{dbs}\"}} ");
    wait_for("offsite to catch up", Duration::from_secs(60), || {
        let t = metric(port, &txid);
        t.is_some() && metric(port, &series) == t
    });
    let log = d.stop();
    let line = log.lines().find(|l| l.contains("over its backlog-limit")).unwrap();
    assert!(line.contains("offsite") && line.contains("1000"), "{line}");
    let direct = credentials_env(server.endpoint());
    restore_and_check_with(
        &[&format!("s3://{BUCKET}/app")],
        &dir.path().join("offsite.db"),
        digest(&db),
        &env_refs(&direct),
    );
    restore_and_check(&[&file_url(&local)], &dir.path().join("local.db"), digest(&db));
}

/// Two daemons pointed at one replica path (a copied config): the second is
/// refused with `-lease-wait 0`, one line naming the holder; the replica still
/// restores exactly the first database. A third one, waiting (the default), says
/// who it waits for and takes over once the first stops (a blue/green deploy):
/// then the replica restores the third one's database.
#[test]
fn one_writer_per_replica_path() {
    let dir = tempfile::tempdir().unwrap();
    let blue = new_db(dir.path());
    let green = dir.path().join("green.db");
    write(&green, &["init", "4096"]);
    write(&green, &["steps", "20", "23"]);
    let replica = dir.path().join("replica");
    let url = file_url(&replica);
    let a = Daemon::start(&[blue.to_str().unwrap(), &url], &dir.path().join("log-a"));
    write(&blue, &["steps", "0", "3"]);
    wait_until_caught_up(|| replica_caught_up(&blue, &replica), "the replica");

    let o = sluice(&["replicate", "-lease-wait", "0", green.to_str().unwrap(), &url]);
    let err = assert_one_line_error(&o, "is being written by another process");
    let pid = a.pid();
    assert!(err.contains(&format!(":{pid} since ")), "names the holder, host:pid and since when: {err}");
    assert!(err.contains("stop that process"), "says what to do: {err}");
    assert!(!dir.path().join(".green.db-litestream").exists(), "the refused process touched nothing");

    let c = Daemon::start(&[green.to_str().unwrap(), &url], &dir.path().join("log-c"));
    c.wait_for_log("waiting for its lease to end", Duration::from_secs(30));
    write(&blue, &["steps", "3", "5"]);
    wait_until_caught_up(|| replica_caught_up(&blue, &replica), "the replica");
    // Checked while the first still holds the lease: once it stops, the waiting one
    // may take over at any moment, and a restore could then find its files.
    restore_and_check(&[&url], &dir.path().join("blue-restored.db"), digest(&blue));
    a.stop();

    // The first is gone: the waiting one takes the replica over from where it is.
    c.wait_for_log(" replicating db=", Duration::from_secs(60));
    write(&green, &["steps", "23", "25"]);
    wait_until_caught_up(|| replica_caught_up(&green, &replica), "the replica");
    c.stop();
    restore_and_check(&[&url], &dir.path().join("green-restored.db"), digest(&green));
}

/// A holder killed with kill -9 on another host (here: another `SLUICE_HOSTNAME`)
/// cannot release its lease: the next process waits, naming it, until the lease
/// expires (`lease-ttl`), then replicates. On moto, which enforces S3's
/// conditional writes (`If-None-Match`, `If-Match`), under the guide's read-write
/// policy.
#[test]
fn a_killed_holders_lease_expires() {
    let moto = Moto::start(12);
    let env = rw_env(&moto.guide_users(BUCKET), moto.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let cfg = dir.path().join("sluice.yml");
    fs::write(
        &cfg,
        format!(
            "lease-ttl: 3s\ndbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      url: s3://{BUCKET}/app\n      sync-interval: 100ms\n",
            db.display()
        ),
    )
    .unwrap();
    let cfgs = cfg.to_str().unwrap();
    let mut blue = Daemon::start_with(&["-config", cfgs], &dir.path().join("log-blue"), &with_host(&env, "blue"));
    write(&db, &["steps", "0", "3"]);
    let url = format!("s3://{BUCKET}/app");
    wait_for("blue to upload", Duration::from_secs(60), || {
        let o = sluice_with(&["ltx", &url], &env_refs(&env));
        o.status.success() && String::from_utf8_lossy(&o.stdout).lines().count() > 1
    });
    let killed = std::time::Instant::now();
    blue.kill9();
    let green = Daemon::start_with(&["-config", cfgs], &dir.path().join("log-green"), &with_host(&env, "green"));
    green.wait_for_log("waiting for its lease to end", Duration::from_secs(30));
    green.wait_for_log(" replicating db=", Duration::from_secs(60));
    assert!(killed.elapsed() >= Duration::from_secs(2), "green waited for the lease to expire");
    write(&db, &["steps", "3", "5"]);
    let log = green.stop();
    let waiting = log.lines().find(|l| l.contains("waiting for its lease to end")).unwrap();
    assert!(waiting.contains("blue:"), "names the holder: {waiting}");
    restore_and_check_with(&[&url], &dir.path().join("restored.db"), digest(&db), &env_refs(&env));
}

/// `verify: {interval, sql}` on a database: the daemon runs restore drills on a
/// schedule. A drill of a good replica passes (`sluice_verify_last_success_seconds`
/// is set); once a byte of every replica file is flipped, the next drill fails,
/// is logged and counted in `sluice_verify_failures_total`.
#[test]
fn scheduled_restore_drills() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let replica = dir.path().join("replica");
    let port = free_port();
    let cfg = dir.path().join("sluice.yml");
    fs::write(
        &cfg,
        format!(
            "addr: 127.0.0.1:{port}\ndbs:\n  - path: {}\n    monitor-interval: 100ms\n    verify:\n      interval: 1s\n\
             \x20     sql:\n        - SELECT count(*) > 0 FROM items\n    replica:\n      url: {}\n      sync-interval: 100ms\n",
            db.display(),
            file_url(&replica)
        ),
    )
    .unwrap();
    let d = Daemon::with_config(&cfg, &dir.path().join("log"));
    write(&db, &["steps", "0", "3"]);
    wait_until_caught_up(|| replica_caught_up(&db, &replica), "the replica");
    let dbs = db.to_str().unwrap();
    let success = format!("sluice_verify_last_success_seconds{{db=\"{dbs}\"}} ");
    let started = chrono::Utc::now().timestamp() as u64;
    wait_for("a drill to pass", Duration::from_secs(60), || metric(port, &success).is_some_and(|t| t >= started));
    d.wait_for_log("restore drill passed", Duration::from_secs(10));

    // Corrupt the replica: flip a byte in the middle of every LTX file.
    use std::os::unix::fs::FileExt;
    let mut flipped = 0;
    for level in fs::read_dir(replica.join("ltx")).unwrap().flatten() {
        for f in fs::read_dir(level.path()).unwrap().flatten() {
            let file = fs::OpenOptions::new().read(true).write(true).open(f.path()).unwrap();
            let mid = file.metadata().unwrap().len() / 2;
            let mut b = [0u8; 1];
            file.read_exact_at(&mut b, mid).unwrap();
            file.write_all_at(&[b[0] ^ 0xff], mid).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped > 0);
    let failures = format!("sluice_verify_failures_total{{db=\"{dbs}\"}} ");
    wait_for("a drill to fail", Duration::from_secs(60), || metric(port, &failures).is_some_and(|n| n >= 1));
    d.wait_for_log("restore drill failed", Duration::from_secs(10));
    let (_, log) = d.stop_with_status();
    let line = log.lines().find(|l| l.contains("restore drill failed")).unwrap();
    assert!(
        line.contains("checksum") || line.contains("corrupt") || line.contains("invalid"),
        "names the cause: {line}"
    );
}

/// `max-sync-ltx-files` (Litestream 0.5.15): at most that many L0 files go up in
/// one upload pass. A database with five local L0 files starts replicating to an
/// empty replica with `max-sync-ltx-files: 2` and an hour's `sync-interval`: the
/// first pass uploads two files, the rest wait for the next pass (here: the final
/// upload at shutdown, after which the replica restores equal to the source).
#[test]
fn max_sync_ltx_files_bounds_one_upload_pass() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let first = dir.path().join("first");
    let d = Daemon::start(&[db.to_str().unwrap(), &file_url(&first)], &dir.path().join("log1"));
    for i in 0..5 {
        write(&db, &["step", &i.to_string()]);
        let want = i as u64 + 2;
        wait_for("the L0 file of each step", Duration::from_secs(30), || replica_l0_max(&first) >= want);
    }
    d.stop();
    let local = l0_count(&dir.path().join(".app.db-litestream/ltx/0"));
    assert!(local >= 5, "five local L0 files to upload, found {local}");

    let second = dir.path().join("second");
    let port = free_port();
    let cfg = dir.path().join("sluice.yml");
    fs::write(
        &cfg,
        format!(
            "addr: 127.0.0.1:{port}\ndbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      url: {}\n      sync-interval: 1h\n      max-sync-ltx-files: 2\n",
            db.display(),
            file_url(&second)
        ),
    )
    .unwrap();
    let d = Daemon::with_config(&cfg, &dir.path().join("log2"));
    let dbs = db.to_str().unwrap();
    let replicated = format!("sluice_replica_txid{{db=\"{dbs}\"}} ");
    wait_for("the first upload pass", Duration::from_secs(30), || metric(port, &replicated).is_some_and(|t| t > 0));
    assert_eq!(l0_count(&second.join("ltx/0")), 2, "one pass uploads max-sync-ltx-files files");
    d.stop();
    assert!(l0_count(&second.join("ltx/0")) >= local, "the final upload sends the rest");
    restore_and_check(&[&file_url(&second)], &dir.path().join("restored.db"), digest(&db));
}

fn l0_count(dir: &std::path::Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".ltx")).count())
}

/// The environment of the guide's read-write user (from `moto.guide_users`),
/// reaching moto at `endpoint`.
fn rw_env(users: &[(String, String, String)], endpoint: String) -> Vec<(&'static str, String)> {
    let rw = users.iter().find(|u| u.0 == "readwrite").unwrap().clone();
    vec![
        ("AWS_ACCESS_KEY_ID", rw.1.clone()),
        ("AWS_SECRET_ACCESS_KEY", rw.2.clone()),
        ("AWS_ENDPOINT_URL_S3", endpoint),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
}

/// `env` with `SLUICE_HOSTNAME` set: another host, as far as the lease can tell.
fn with_host<'a>(env: &'a [(&'static str, String)], host: &'static str) -> Vec<(&'static str, &'a str)> {
    let mut e = env_refs(env);
    e.push(("SLUICE_HOSTNAME", host));
    e
}

fn lease_config(dir: &std::path::Path, db: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("sluice.yml");
    fs::write(
        &cfg,
        format!(
            "lease-ttl: 2s\ndbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      url: s3://{BUCKET}/app\n      sync-interval: 100ms\n",
            db.display()
        ),
    )
    .unwrap();
    cfg
}

/// An upload that takes several times `lease-ttl` (2 s; a 3 MiB level-0 file sent
/// through a 300 KB/s uplink) keeps the lease: it is renewed while the upload runs,
/// so a second process waiting for the path does not take over until the first
/// stops. On moto, which enforces the conditional writes.
#[test]
fn an_upload_longer_than_the_lease_keeps_it() {
    let moto = Moto::start(12);
    let slow = ThrottleProxy::start(moto.port, 300_000);
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let cfg = lease_config(dir.path(), &db);
    let cfgs = cfg.to_str().unwrap();
    let users = moto.guide_users(BUCKET);
    let env = rw_env(&users, slow.endpoint());
    let direct = rw_env(&users, moto.endpoint());
    let blue = Daemon::start_with(&["-config", cfgs], &dir.path().join("log-blue"), &with_host(&env, "blue"));
    write(&db, &["steps", "0", "2"]);
    let url = format!("s3://{BUCKET}/app");
    let uploaded = |min_bytes: u64| {
        let o = sluice_with(&["ltx", "-json", &url], &env_refs(&direct));
        o.status.success()
            && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|files| files.iter().any(|f| f["size"].as_u64().is_some_and(|s| s >= min_bytes)))
    };
    wait_for("blue's first upload", Duration::from_secs(60), || uploaded(1));
    let green = Daemon::start_with(&["-config", cfgs], &dir.path().join("log-green"), &with_host(&direct, "green"));
    green.wait_for_log("waiting for its lease to end", Duration::from_secs(30));
    let started = Instant::now();
    write(&db, &["randomfill", "3"]);
    wait_for("blue's slow upload", Duration::from_secs(240), || uploaded(1 << 20));
    let took = started.elapsed();
    assert!(took > Duration::from_secs(6), "the upload outlasted the 2 s lease several times ({took:?})");
    assert!(!green.log().contains(" replicating db="), "green took over during blue's upload:\n{}", green.log());
    blue.stop();
    green.wait_for_log(" replicating db=", Duration::from_secs(60));
    write(&db, &["steps", "2", "4"]);
    let _ = green.stop();
    restore_and_check_with(&[&url], &dir.path().join("restored.db"), digest(&db), &env_refs(&direct));
}

/// Two writers of one database and replica path on moto (`lease-ttl: 2s`): blue
/// replicates and uploads, is paused (SIGSTOP) past its lease, and green takes the
/// replica over and writes. Returns (blue, still paused; green).
struct PausedBlue {
    _moto: Moto,
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
    url: String,
}

impl PausedBlue {
    fn start() -> (PausedBlue, Daemon, Daemon) {
        let moto = Moto::start(12);
        let dir = tempfile::tempdir().unwrap();
        let db = new_db(dir.path());
        let cfg = lease_config(dir.path(), &db);
        let cfgs = cfg.to_str().unwrap();
        let env = rw_env(&moto.guide_users(BUCKET), moto.endpoint());
        let url = format!("s3://{BUCKET}/app");
        let blue = Daemon::start_with(&["-config", cfgs], &dir.path().join("log-blue"), &with_host(&env, "blue"));
        write(&db, &["steps", "0", "2"]);
        wait_for("blue to upload", Duration::from_secs(60), || {
            let o = sluice_with(&["ltx", &url], &env_refs(&env));
            o.status.success() && String::from_utf8_lossy(&o.stdout).lines().count() > 1
        });
        unsafe { libc::kill(blue.pid() as i32, libc::SIGSTOP) };
        let green = Daemon::start_with(&["-config", cfgs], &dir.path().join("log-green"), &with_host(&env, "green"));
        green.wait_for_log(" replicating db=", Duration::from_secs(60));
        write(&db, &["steps", "2", "4"]);
        (PausedBlue { _moto: moto, dir, db, env, url }, blue, green)
    }

    /// The replica restores the database exactly.
    fn check_restore(&self) {
        let out = self.dir.path().join("restored.db");
        restore_and_check_with(&[&self.url], &out, digest(&self.db), &env_refs(&self.env));
    }
}

/// A process paused past its lease (SIGSTOP: a VM suspended, a long GC pause)
/// finds on waking that another one took the replica over: it stops replicating,
/// with one line saying so, and writes nothing more; the replica restores the
/// database exactly. (If the other had already stopped, the first would take the
/// lease back with a new generation and start over from the replica: ChangedHands.)
#[test]
fn a_paused_writer_that_lost_its_lease_steps_down() {
    let (case, blue, green) = PausedBlue::start();
    unsafe { libc::kill(blue.pid() as i32, libc::SIGCONT) };
    write(&case.db, &["steps", "4", "6"]);
    let (status, log) = blue.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "blue stepped down with an error status:\n{log}");
    let last = log.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error:") && last.contains("another process took over"), "{log}");
    let log = green.stop();
    assert!(!log.contains("error"), "green replicated throughout:\n{log}");
    case.check_restore();
}

/// ChangedHands: a process paused past its lease while another took the replica
/// over, wrote, and stopped (giving the lease back). On waking, the first takes the
/// lease again, sees that someone wrote there in between, and starts over from the
/// replica's state instead of continuing its own chain: it logs so once, goes on
/// replicating, and the replica restores the database exactly.
#[test]
fn a_writer_whose_replica_changed_hands_starts_over_from_it() {
    let (case, blue, green) = PausedBlue::start();
    let green_log = green.stop();
    assert!(green_log.contains("lease released"), "{green_log}");
    unsafe { libc::kill(blue.pid() as i32, libc::SIGCONT) };
    write(&case.db, &["steps", "4", "6"]);
    blue.wait_for_log("was written by another process while this one did not hold its lease", Duration::from_secs(60));
    write(&case.db, &["steps", "6", "8"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    for attempt in 0.. {
        // A fresh path each time: reading a restored database leaves its -wal beside it.
        let out = case.dir.path().join(format!("check-{attempt}.db"));
        let o = sluice_with(&["restore", "-o", out.to_str().unwrap(), &case.url], &env_refs(&case.env));
        if o.status.success() && digest(&out) == digest(&case.db) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blue never caught up after starting over (last restore: {}; {}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim(),
            blue.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = blue.stop();
    assert!(!log.contains("another process took over"), "blue went on replicating:\n{log}");
    case.check_restore();
}

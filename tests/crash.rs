//! Crash safety: scripted interleavings of a replicator that stops and starts while
//! the application, holding its connection open, writes, checkpoints and restarts
//! the WAL. Each run of `sluice replicate -once` is one start-sync-stop of the
//! daemon. After every scenario, every TXID of the replica is restored (from all
//! levels, and from level 0 alone) and must be a state the source really had.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use support::*;

/// The application: one long-lived connection in its own Python process.
struct App {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Tag of every committed ledger row, in order: the source's history.
    history: Vec<String>,
}

impl App {
    fn start(db: &Path, page_size: u32) -> App {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/support/app.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(db)
            .arg(page_size.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok ready");
        App { child, stdin, stdout, history: Vec::new() }
    }

    fn run(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ok"), "application command {cmd:?} failed: {line}");
        if let Some(rest) = cmd.strip_prefix("insert ") {
            let mut w = rest.split_whitespace();
            let (tag, n) = (w.next().unwrap(), w.next().unwrap().parse::<usize>().unwrap());
            self.history.extend(std::iter::repeat_n(tag.to_string(), n));
        }
        line.trim_start_matches("ok").trim().to_string()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

/// The body app.py writes for a row.
fn body(seq: usize, tag: &str) -> String {
    let unit = format!("{tag}:{seq}|");
    unit.repeat(40).chars().take(60 + seq % 300).collect()
}

/// Checks that a restored database is a state the source had: integrity_check
/// passes and its ledger is a prefix of the source's history. Returns its length.
fn check_restored(path: &Path, history: &[String], what: &str) -> usize {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let ic: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ic, ["ok"], "{what}: integrity_check");
    let rows: Vec<(usize, String, String)> = conn
        .prepare("SELECT seq, tag, body FROM ledger ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get::<_, i64>(0)? as usize, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (i, (seq, tag, b)) in rows.iter().enumerate() {
        assert_eq!(*seq, i + 1, "{what}: ledger is not a prefix of the source (row {i} has seq {seq})");
        assert!(i < history.len(), "{what}: row {seq} was never committed");
        assert_eq!(tag, &history[i], "{what}: row {seq} has tag {tag}, the source committed {}", history[i]);
        assert_eq!(b, &body(*seq, tag), "{what}: row {seq} has a body the source never wrote");
    }
    rows.len()
}

fn l0_txids(replica: &Path) -> Vec<u64> {
    txids_at(replica, 0)
}

/// The max TXIDs of a file replica's files at `level`, sorted.
fn txids_at(replica: &Path, level: u8) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(replica.join(format!("ltx/{level}")))
        .map(|d| d.flatten().filter_map(|e| sluice::ltx::parse_filename(&e.file_name().to_string_lossy())))
        .into_iter()
        .flatten()
        .map(|(_, max)| max)
        .collect();
    v.sort();
    v
}

/// The lowest min TXID among a file replica's files at `level`.
fn txids_at_min(replica: &Path, level: u8) -> u64 {
    fs::read_dir(replica.join(format!("ltx/{level}")))
        .unwrap()
        .flatten()
        .filter_map(|e| sluice::ltx::parse_filename(&e.file_name().to_string_lossy()))
        .map(|(min, _)| min)
        .min()
        .unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

struct Case {
    dir: tempfile::TempDir,
    db: PathBuf,
    replica: PathBuf,
    app: App,
}

impl Case {
    fn new(page_size: u32) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let replica = dir.path().join("replica");
        let app = App::start(&db, page_size);
        Case { dir, db, replica, app }
    }

    /// One start-sync-stop of the replicator.
    fn replicate_once(&self) {
        let out = sluice(&["replicate", "-once", self.db.to_str().unwrap(), &file_url(&self.replica)]);
        assert!(out.status.success(), "replicate -once: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Restores every TXID, from the whole replica and from level 0 alone, checks
    /// each, and checks that the latest equals the source.
    fn check_every_txid(&self) {
        let l0_only = self.dir.path().join("l0-only");
        let _ = fs::remove_dir_all(&l0_only);
        copy_dir(&self.replica.join("ltx/0"), &l0_only.join("ltx/0"));
        self.check_txids(&[(&self.replica, "replica"), (&l0_only, "level 0 alone")]);
    }

    /// As [`Case::check_every_txid`], for the TXIDs level 0 still holds, from the
    /// whole replica only (retention may have removed the start of level 0).
    fn check_txids(&self, sources: &[(&PathBuf, &str)]) {
        let mut txids = l0_txids(&self.replica);
        assert!(!txids.is_empty());
        if txids[0] != 1 {
            // Retention removed the start of level 0. A TXID stays restorable when a
            // file of a higher level (a compaction or a snapshot) ends where what is
            // left of level 0 goes on: every TXID from the first such end must restore.
            let first_l0 = txids_at_min(&self.replica, 0);
            let floor = (1..=9u8)
                .flat_map(|level| txids_at(&self.replica, level))
                .filter(|&end| end + 1 >= first_l0)
                .min()
                .expect("level 0 pruned, but no compaction or snapshot reaches it");
            txids.retain(|&t| t >= floor);
        }
        for (i, &(source, label)) in sources.iter().enumerate() {
            let mut last = 0;
            for &txid in &txids {
                let out = self.dir.path().join(format!("restored-{i}-{txid}.db"));
                let _ = fs::remove_file(&out);
                let hex = format!("{txid:016x}");
                let o = sluice(&["restore", "-txid", &hex, "-o", out.to_str().unwrap(), &file_url(source)]);
                assert!(o.status.success(), "restore -txid {hex} from {label}: {}", String::from_utf8_lossy(&o.stderr));
                let n = check_restored(&out, &self.app.history, &format!("{label} at TXID {hex}"));
                assert!(n >= last, "{label}: TXID {hex} restores {n} rows, fewer than the {last} of an earlier TXID");
                last = n;
            }
            assert_eq!(last, self.app.history.len(), "{label}: the newest TXID lacks committed rows");
        }
        let latest = self.dir.path().join("latest.db");
        let o = sluice(&["restore", "-o", latest.to_str().unwrap(), &file_url(&self.replica)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(digest_app(&latest), digest_app(&self.db), "the latest restore differs from the source");
    }
}

const MODES: [&str; 4] = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];

/// The reproduction: frames appended to the old WAL generation after our last
/// capture, checkpointed and then restarted by the application while we were down.
#[test]
fn appended_then_checkpointed_then_restarted_while_stopped() {
    for mode in MODES {
        let mut c = Case::new(4096);
        c.app.run("insert a 30");
        c.replicate_once();
        c.app.run("insert b 30");
        c.app.run(&format!("checkpoint {mode}"));
        c.app.run("insert c 5");
        c.replicate_once();
        c.app.run("insert d 3");
        c.replicate_once();
        c.check_every_txid();
    }
}

/// The application checkpoints while we are down and writes nothing after it: the
/// WAL restarts on the next write, which may be ours.
#[test]
fn checkpointed_while_stopped_restarted_by_the_next_start() {
    for mode in MODES {
        let mut c = Case::new(4096);
        c.app.run("insert a 20");
        c.replicate_once();
        c.app.run("insert b 20");
        c.app.run(&format!("checkpoint {mode}"));
        c.replicate_once();
        c.app.run("insert c 5");
        c.replicate_once();
        c.check_every_txid();
    }
}

/// Several restarts while we are down, and a new generation long enough to
/// overwrite our last frame, or short enough to leave it in place.
#[test]
fn several_restarts_while_stopped() {
    for (mode, rows) in [("PASSIVE", 2), ("RESTART", 200), ("TRUNCATE", 2), ("FULL", 200)] {
        let mut c = Case::new(4096);
        c.app.run("insert a 40");
        c.replicate_once();
        for round in 0..3 {
            c.app.run(&format!("insert r{round} {rows}"));
            c.app.run(&format!("checkpoint {mode}"));
        }
        c.app.run("insert z 3");
        c.replicate_once();
        c.check_every_txid();
    }
}

/// Page sizes at both ends, with blobs (overflow chains), deletes and VACUUM while
/// we are down, so that the database shrinks and grows again.
#[test]
fn vacuum_and_page_sizes_while_stopped() {
    for page_size in [512, 65536] {
        let mut c = Case::new(page_size);
        c.app.run("insert a 20");
        c.app.run("blob 300000");
        c.replicate_once();
        c.app.run("insert b 10");
        c.app.run("delete-blobs");
        c.app.run("vacuum");
        c.app.run("checkpoint PASSIVE");
        c.app.run("insert c 10");
        c.replicate_once();
        c.app.run("blob 200000");
        c.app.run("insert d 5");
        c.replicate_once();
        c.check_every_txid();
    }
}

/// The application's last connection closes while we are down (SQLite checkpoints
/// and removes the WAL), then opens again and writes.
#[test]
fn wal_removed_while_stopped() {
    let mut c = Case::new(4096);
    c.app.run("insert a 20");
    c.replicate_once();
    c.app.run("insert b 20");
    c.app.run("reopen");
    c.app.run("insert c 5");
    c.replicate_once();
    c.check_every_txid();
}

/// A `sluice replicate -config` that kills itself at a crash point.
fn start_daemon(cfg: &Path, log: &Path, failpoint: Option<&str>) -> Child {
    let mut cmd = Command::new(sluice_bin());
    cmd.args(["replicate", "-config", cfg.to_str().unwrap()]).env("LOG_LEVEL", "debug");
    match failpoint {
        Some(p) => cmd.env("SLUICE_FAILPOINT", p),
        None => cmd.env_remove("SLUICE_FAILPOINT"),
    };
    let f = fs::File::create(log).unwrap();
    cmd.stdout(f.try_clone().unwrap()).stderr(f).spawn().unwrap()
}

/// kill -9 at each instant that matters: while writing a local L0 file, between
/// writing and recording it, between a checkpoint and the WAL restart, after the
/// restart, and after storing an upload, a compaction, a snapshot or a retention
/// delete. Each time the next start heals: the replica restores every TXID to a
/// state the source had, and finally equal to the source.
#[test]
fn killed_at_every_crash_point() {
    use std::os::unix::process::ExitStatusExt;
    let points = [
        "l0-written",
        "l0-renamed",
        "checkpoint-done",
        "checkpoint-restarted",
        "upload-stored",
        "compaction-stored",
        "snapshot-stored",
        "retention-deleted",
    ];
    for point in points {
        let mut c = Case::new(4096);
        let cfg = c.dir.path().join("sluice.yml");
        let retention = if point == "retention-deleted" { "1s" } else { "1h" };
        fs::write(
            &cfg,
            format!(
                "levels:\n  - interval: 1s\nsnapshot:\n  interval: 2s\n  retention: 1h\n\
                 l0-retention: {retention}\nl0-retention-check-interval: 1s\n\
                 dbs:\n  - path: {}\n    monitor-interval: 50ms\n    min-checkpoint-page-count: 30\n\
                 \x20   checkpoint-interval: 1s\n    replica:\n      url: {}\n      sync-interval: 50ms\n",
                c.db.display(),
                file_url(&c.replica)
            ),
        )
        .unwrap();
        let log = c.dir.path().join("crash.log");
        c.app.run("insert a 10");
        let mut daemon = start_daemon(&cfg, &log, Some(point));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        let status = loop {
            if let Some(status) = daemon.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = daemon.kill();
                let text = fs::read_to_string(&log).unwrap();
                let tail: Vec<&str> = text.lines().filter(|l| !l.contains("DEBUG")).collect();
                panic!(
                    "sluice never reached crash point {point}:\n{}",
                    tail[tail.len().saturating_sub(30)..].join("\n")
                );
            }
            c.app.run("insert w 3");
        };
        let text = fs::read_to_string(&log).unwrap();
        assert_eq!(status.signal(), Some(9), "{point}: sluice should have been killed:\n{text}");
        assert!(text.contains(&format!("failpoint {point}")), "{point}: killed elsewhere:\n{text}");

        // While it is down, the application goes on, and checkpoints.
        c.app.run("insert b 20");
        c.app.run("checkpoint PASSIVE");
        c.app.run("insert c 5");
        let log = c.dir.path().join("healed.log");
        let mut daemon = start_daemon(&cfg, &log, None);
        wait_until_caught_up(|| replica_caught_up(&c.db, &c.replica), point);
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
        assert!(daemon.wait().unwrap().success(), "{point}: {}", fs::read_to_string(&log).unwrap());
        c.check_txids(&[(&c.replica, point)]);
    }
}

/// The local L0 file of `txid` (newest: the position) in a database's default state directory.
fn local_l0(db: &Path, txid: Option<u64>) -> PathBuf {
    use sluice::capture::db::{default_meta_path, local_txid};
    let meta = default_meta_path(db);
    let txid = txid.unwrap_or_else(|| local_txid(&meta).unwrap().expect("no local L0 file"));
    meta.join("ltx/0").join(sluice::ltx::format_filename(txid, txid))
}

/// A local LTX file damaged while Sluice is down (a disk fault, a stray edit, a copy
/// cut short) is never uploaded and never taken as the position: the next start
/// names it, resets local state, continues from the replica (Litestream's
/// `auto-recover`, which Sluice always does), and every TXID restores to a state the
/// source had. The damaged file is one Sluice wrote and was killed before uploading
/// (with a flipped page byte, cut short, or a zeroed header), or one already uploaded.
#[test]
fn damaged_local_ltx_files_are_never_shipped() {
    use std::os::unix::fs::FileExt;
    use std::os::unix::process::ExitStatusExt;
    type Damage = fn(&Path);
    let flip: Damage = |p| {
        let f = fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
        let at = f.metadata().unwrap().len() / 2;
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    };
    let cut: Damage = |p| {
        let f = fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(f.metadata().unwrap().len() / 2).unwrap();
    };
    let zero_header: Damage =
        |p| fs::OpenOptions::new().write(true).open(p).unwrap().write_all_at(&[0; 100], 0).unwrap();
    let cases: [(&str, Damage, bool, &str); 4] = [
        ("a page byte flipped in a file not yet uploaded", flip, false, "PASSIVE"),
        ("a file not yet uploaded cut short", cut, false, "TRUNCATE"),
        ("a zeroed header in a file not yet uploaded", zero_header, false, ""),
        ("a page byte flipped in a file already uploaded", flip, true, "RESTART"),
    ];
    for (what, damage, uploaded, mode) in cases {
        let mut c = Case::new(4096);
        c.app.run("insert a 20");
        c.replicate_once();
        c.app.run("insert b 20");
        let target = if uploaded {
            c.replicate_once();
            // The first local file, long since in the replica.
            local_l0(&c.db, Some(1))
        } else {
            let url = file_url(&c.replica);
            let o = sluice_with(
                &["replicate", "-once", c.db.to_str().unwrap(), &url],
                &[("SLUICE_FAILPOINT", "l0-renamed")],
            );
            assert_eq!(o.status.signal(), Some(9), "{what}: {}", String::from_utf8_lossy(&o.stderr));
            let newest = local_l0(&c.db, None);
            let name = newest.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!c.replica.join("ltx/0").join(&name).exists(), "{what}: {name} was uploaded before the kill");
            newest
        };
        damage(&target);
        if !mode.is_empty() {
            c.app.run(&format!("checkpoint {mode}"));
        }
        c.app.run("insert c 5");
        let o = sluice(&["replicate", "-once", c.db.to_str().unwrap(), &file_url(&c.replica)]);
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{what}: the next start failed: {log}");
        let name = target.file_name().unwrap().to_string_lossy();
        assert!(
            log.lines().any(|l| l.contains("local LTX file is damaged") && l.contains(&*name)),
            "{what}: the log does not name {name}:\n{log}"
        );
        c.app.run("insert d 3");
        c.replicate_once();
        c.check_every_txid();
    }
}

/// Something changes the database file behind SQLite's back (a rogue process, a disk
/// fault) while Sluice runs. At a complete checkpoint within one checkpoint interval
/// Sluice finds that the file no longer matches the checksum of what it captured: it
/// logs an error, counts it in `sluice_position_mismatch_total`, and writes a snapshot instead of further
/// increments, so the replica again restores exactly what the file holds.
#[test]
fn database_changed_behind_our_back_is_detected_at_the_next_checkpoint() {
    use std::os::unix::fs::FileExt;
    let mut c = Case::new(4096);
    let cfg = c.dir.path().join("sluice.yml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    fs::write(
        &cfg,
        format!(
            "addr: 127.0.0.1:{port}\ndbs:\n  - path: {}\n    monitor-interval: 50ms\n    checkpoint-interval: 200ms\n\
             \x20   replica:\n      url: {}\n      sync-interval: 50ms\n",
            c.db.display(),
            file_url(&c.replica)
        ),
    )
    .unwrap();
    c.app.run("insert a 10");
    let root: u64 = c.app.run("cold").parse().unwrap();
    let log = c.dir.path().join("log");
    let mut daemon = start_daemon(&cfg, &log, None);
    let wait_log = |needle: &str, after: usize| -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Some(i) = text[after.min(text.len())..].find(needle) {
                return after + i + needle.len();
            }
            assert!(std::time::Instant::now() < deadline, "no {needle:?} in the log:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // Wait until a checkpoint has copied the `cold` page into the database file.
    c.app.run("insert b 3");
    let at = wait_log("checkpoint", 0);
    c.app.run("insert c 3");
    let at = wait_log("checkpoint", at);
    // Change a byte of the cold page's free space: SQLite never reads it, so the
    // database stays valid, but it is no longer the database Sluice captured.
    let file = fs::OpenOptions::new().write(true).open(&c.db).unwrap();
    file.write_all_at(&[0x5a], (root - 1) * 4096 + 2048).unwrap();
    drop(file);
    c.app.run("insert d 3");
    wait_log("the database does not match what was captured", at);
    wait_log("position did not match the database", at);
    let metrics = http_get(port, "/metrics");
    let line = format!("sluice_position_mismatch_total{{db=\"{}\"}} 1", c.db.display());
    assert!(metrics.lines().any(|l| l == line), "expected {line} in:\n{metrics}");
    c.app.run("insert e 3");
    wait_until_caught_up(|| replica_caught_up(&c.db, &c.replica), "the database");
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success());
    // The replica holds the file as it really is, changed byte included.
    let out = c.dir.path().join("latest.db");
    let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(&c.replica)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = |p: &Path| {
        let mut b = vec![0u8; 4096];
        fs::File::open(p).unwrap().read_exact_at(&mut b, (root - 1) * 4096).unwrap();
        b
    };
    assert_eq!(page(&out), page(&c.db), "the restored cold page differs from the file");
    assert_eq!(check_restored(&out, &c.app.history, "latest"), c.app.history.len());
}

/// POSIX drops every lock a process holds on a file when it closes any descriptor
/// of it. Sluice once read snapshot pages through a descriptor it opened and closed,
/// which silently released its SQLite locks: the next application connection to
/// close then believed it was the last one, checkpointed past Sluice's read
/// transaction and deleted the WAL. Here snapshots are taken every second while an
/// application opens and closes a connection for each write: the WAL must never be
/// removed under Sluice, so the only full snapshot in level 0 is the first one.
#[test]
fn snapshots_never_release_our_locks() {
    let s = Setup::new();
    s.top_level("levels:\n  - interval: 1s\nsnapshot:\n  interval: 1s\n  retention: 1h\n");
    let d = s.daemon();
    let start = std::time::Instant::now();
    let mut n = 0;
    while start.elapsed() < std::time::Duration::from_secs(4) {
        if [0, 1, 2, 4, 7].contains(&(n % 8)) {
            write(&s.db, &["step", &n.to_string()]);
        }
        n += 1;
    }
    wait_caught_up(&s.db, &s.replica);
    let log = d.stop();
    assert!(log.contains("snapshot written"), "no level-9 snapshot was taken:\n{log}");
    assert!(!log.contains("reopening"), "the WAL was removed under sluice:\n{log}");
    let full: Vec<&str> = log.lines().filter(|l| l.contains("wrote snapshot")).collect();
    assert_eq!(full.len(), 1, "only the first L0 file may be a full snapshot:\n{}", full.join("\n"));
    restore_and_check(&[&s.url], &s.path("restored.db"), digest(&s.db));
}

/// Lines of a daemon log that mention `db` and contain `what`.
fn log_count(log: &Path, db: &Path, what: &str) -> usize {
    let text = fs::read_to_string(log).unwrap_or_default();
    let db = db.display().to_string();
    text.lines().filter(|l| l.contains(what) && l.contains(&db)).count()
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// More databases than the open-files limit can hold open at once: idle ones close
/// their files (park) and reopen on their next change. While a database is parked
/// its application writes, checkpoints in every mode, and closes its last
/// connection (which checkpoints and removes the WAL). Every change still reaches
/// the replica, every restore is a state the source had and the latest equals it,
/// and a WAL removed after everything was captured costs no snapshot: the database
/// file is checked against our position instead.
#[test]
fn idle_databases_close_their_files_and_reopen_on_change() {
    const N: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let mut dbs = Vec::new();
    let mut cfg = String::from("dbs:\n");
    for i in 0..N {
        let db = dir.path().join(format!("tenant-{i}.db"));
        let replica = dir.path().join(format!("replica-{i}"));
        let mut app = App::start(&db, 4096);
        app.run("insert a 5");
        cfg += &format!(
            "  - path: {}\n    monitor-interval: 50ms\n    replica:\n      url: {}\n      sync-interval: 50ms\n",
            db.display(),
            file_url(&replica)
        );
        dbs.push((db, replica, app));
    }
    let cfg_path = dir.path().join("sluice.yml");
    fs::write(&cfg_path, cfg).unwrap();
    let log = dir.path().join("sluice.log");
    // Room for (150 - 128) / 8 = 2 open databases.
    let script = format!("ulimit -n 150 && exec {} replicate -config {}", sluice_bin(), cfg_path.display());
    let f = fs::File::create(&log).unwrap();
    let mut daemon = Command::new("sh")
        .args(["-c", &script])
        .env("LOG_LEVEL", "debug")
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let parked = |db: &Path| log_count(&log, db, "idle: files closed");
    for (db, replica, _) in &dbs {
        wait_until_caught_up(|| replica_caught_up(db, replica), "start");
        wait_for("a first park", || parked(db) > 0);
    }
    assert!(fs::read_to_string(&log).unwrap().contains("cannot hold every database open"));

    // Parked: the application writes and checkpoints; the daemon wakes and captures.
    for (i, (_, _, app)) in dbs.iter_mut().enumerate() {
        app.run("insert b 7");
        app.run(&format!("checkpoint {}", MODES[i % MODES.len()]));
        app.run("insert c 3");
    }
    for (db, replica, _) in &dbs {
        wait_until_caught_up(|| replica_caught_up(db, replica), "writes while parked");
    }
    // Parked again with everything captured: the application closes its last
    // connection (the WAL goes), opens it again and writes.
    let counts: Vec<usize> = dbs.iter().map(|(db, _, _)| parked(db)).collect();
    for ((db, _, _), n) in dbs.iter().zip(&counts) {
        wait_for("the next park", || parked(db) > *n);
    }
    for (_, _, app) in dbs.iter_mut() {
        app.run("reopen");
        app.run("insert d 2");
    }
    for (db, replica, _) in &dbs {
        wait_until_caught_up(|| replica_caught_up(db, replica), "writes after the WAL was removed");
        assert!(
            log_count(&log, db, "holds exactly our position") > 0,
            "{}: the removed WAL cost a snapshot:\n{}",
            db.display(),
            fs::read_to_string(&log).unwrap()
        );
    }
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success(), "{}", fs::read_to_string(&log).unwrap());
    for (i, (db, replica, app)) in dbs.iter().enumerate() {
        let out = dir.path().join(format!("restored-{i}.db"));
        let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(replica)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let n = check_restored(&out, &app.history, &db.display().to_string());
        assert_eq!(n, app.history.len(), "{}: the restore lacks committed rows", db.display());
        assert_eq!(digest_app(&out), digest_app(db), "{}: the restore differs from the source", db.display());
    }
}

/// Whether a process holds a descriptor of `db` or its `-wal` or `-shm` file.
fn holds_files_of(pid: u32, db: &Path) -> bool {
    let prefix = db.display().to_string();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.unwrap().path()).ok())
        .any(|t| t.to_string_lossy().starts_with(&prefix))
}

/// With descriptors to spare, a small idle database still closes its files once no
/// checkpoint is pending: no connection, no `-shm` mapping, no descriptor. While
/// it is closed the application writes, checkpoints in every mode (restarting the
/// WAL) and writes again; every change reaches the replica, and the restore equals
/// the source. Last, its newest local LTX file is damaged while it is closed.
#[test]
fn a_small_idle_database_holds_no_files_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tenant.db");
    let replica = dir.path().join("replica");
    let mut app = App::start(&db, 4096);
    app.run("insert a 5");
    let cfg = dir.path().join("sluice.yml");
    fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    monitor-interval: 50ms\n    checkpoint-interval: 1s\n    replica:\n      url: {}\n      sync-interval: 50ms\n",
            db.display(),
            file_url(&replica)
        ),
    )
    .unwrap();
    let log = dir.path().join("sluice.log");
    let mut daemon = start_daemon(&cfg, &log, None);
    let parked = || log_count(&log, &db, "idle: files closed");
    wait_until_caught_up(|| replica_caught_up(&db, &replica), "start");
    wait_for("a first park", || parked() > 0);
    assert!(!holds_files_of(daemon.id(), &db), "a parked database still has open files");
    assert!(!fs::read_to_string(&log).unwrap().contains("cannot hold every database open"));

    for (i, mode) in MODES.iter().enumerate() {
        let n = parked();
        app.run(&format!("insert b{i} 7"));
        app.run(&format!("checkpoint {mode}"));
        app.run(&format!("insert c{i} 3"));
        wait_until_caught_up(|| replica_caught_up(&db, &replica), mode);
        wait_for("the next park", || parked() > n);
        assert!(!holds_files_of(daemon.id(), &db), "a parked database still has open files");
    }
    // The newest local file is damaged while the database is parked: the reopen
    // names it, resets local state, goes on from the replica, and misses nothing.
    {
        use std::os::unix::fs::FileExt;
        let n = parked();
        let newest = local_l0(&db, None);
        fs::OpenOptions::new().write(true).open(&newest).unwrap().write_all_at(&[0; 100], 0).unwrap();
        app.run("insert e 4");
        wait_until_caught_up(|| replica_caught_up(&db, &replica), "after the damage");
        assert!(
            log_count(&log, &db, "cannot read the newest local LTX file") > 0,
            "the damaged {} went unnoticed:\n{}",
            newest.display(),
            fs::read_to_string(&log).unwrap()
        );
        wait_for("the next park", || parked() > n);
    }
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    assert!(daemon.wait().unwrap().success(), "{}", fs::read_to_string(&log).unwrap());
    let out = dir.path().join("restored.db");
    let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(check_restored(&out, &app.history, "the restore"), app.history.len());
    assert_eq!(digest_app(&out), digest_app(&db), "the restore differs from the source");
}

//! Compaction levels, L9 snapshots, retention and point-in-time restore across
//! levels, with intervals of seconds.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::Duration;

use support::*;

fn level_config(path: &Path, db: &Path, replica: &Path, snapshot: &str, retention: &str, l0_retention: &str) {
    let text = format!(
        "levels:\n  - interval: 1s\n  - interval: 2s\nsnapshot:\n  interval: {snapshot}\n  retention: {retention}\n\
         l0-retention: {l0_retention}\nl0-retention-check-interval: 500ms\n\
         dbs:\n  - path: {}\n    monitor-interval: 50ms\n    replica:\n      url: {}\n      sync-interval: 50ms\n",
        db.display(),
        file_url(replica)
    );
    fs::write(path, text).unwrap();
}

/// (min, max) of every file per level.
fn listing(replica: &Path) -> BTreeMap<u8, Vec<(u64, u64)>> {
    let mut out = BTreeMap::new();
    for level in 0..=9u8 {
        let Ok(entries) = fs::read_dir(replica.join(format!("ltx/{level}"))) else { continue };
        let mut v: Vec<(u64, u64)> =
            entries.flatten().filter_map(|e| sluice::ltx::parse_filename(&e.file_name().to_string_lossy())).collect();
        v.sort();
        if !v.is_empty() {
            out.insert(level, v);
        }
    }
    out
}

fn file_path(replica: &Path, level: u8, (min, max): (u64, u64)) -> PathBuf {
    replica.join(format!("ltx/{level}/{min:016x}-{max:016x}.ltx"))
}

/// Records (txid, time, digest) after each of `steps`, pausing so levels compact.
fn record_points(
    db: &Path,
    replica: &Path,
    steps: std::ops::Range<u32>,
    pause: Duration,
) -> Vec<(u64, String, Digest)> {
    let mut points = Vec::new();
    for step in steps {
        write(db, &["step", &step.to_string()]);
        let (txid, d) = loop {
            let txid = wait_caught_up(db, replica);
            let d = digest(db);
            if replica_caught_up(db, replica) && replica_l0_max(replica) == txid {
                break (txid, d);
            }
        };
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        points.push((txid, at, d));
        sleep(pause);
    }
    points
}

#[test]
fn levels_snapshots_and_point_in_time_restores() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("sluice.yml");
    level_config(&cfg, &db, &replica, "3s", "1h", "1h");
    let d = Daemon::with_config(&cfg, &dir.path().join("log"));
    let points = record_points(&db, &replica, 0..14, Duration::from_millis(600));
    // Let the last compactions and snapshots happen (a busy machine may need longer).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let newest = points.last().unwrap().0;
    loop {
        let files = listing(&replica);
        let has = |l: u8, at_least: usize| files.get(&l).is_some_and(|v| v.len() >= at_least);
        let compacted = files.get(&2).and_then(|v| v.last()).is_some_and(|(_, max)| *max >= newest);
        if (has(0, 1) && has(1, 1) && compacted && has(9, 2)) || std::time::Instant::now() > deadline {
            break;
        }
        sleep(Duration::from_millis(100));
    }
    d.stop();

    let files = listing(&replica);
    for level in [0u8, 1, 2, 9] {
        assert!(files.contains_key(&level), "level {level} should hold files: {files:?}");
    }
    // TXID ranges are contiguous within each compaction level; snapshots start at 1.
    for level in [0u8, 1, 2] {
        for w in files[&level].windows(2) {
            assert_eq!(w[0].1 + 1, w[1].0, "level {level} has a gap or overlap: {:?}", files[&level]);
        }
    }
    assert!(files[&9].iter().all(|(min, _)| *min == 1));
    assert!(files[&9].len() >= 2, "several snapshots over the run: {:?}", files[&9]);

    let url = file_url(&replica);
    for (i, (txid, at, dg)) in points.iter().enumerate() {
        let t = format!("{txid:016x}");
        restore_and_check(&["-txid", &t, &url], &dir.path().join(format!("t{i}.db")), *dg);
        restore_and_check(&["-timestamp", at, &url], &dir.path().join(format!("s{i}.db")), *dg);
    }
    restore_and_check(&[&url], &dir.path().join("latest.db"), digest(&db));

    // Litestream 0.5.17 restores the same points from the levels sluice built.
    assert_litestream_version();
    for (i, (txid, _, dg)) in points.iter().enumerate().step_by(3) {
        let out = dir.path().join(format!("ls{i}.db"));
        let o = litestream(&["restore", "-o", out.to_str().unwrap(), "-txid", &format!("{txid:016x}"), &url]);
        assert!(
            o.status.success(),
            "litestream: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        integrity_ok(&out);
        assert_eq!(digest(&out), *dg, "litestream restore at TXID {txid}");
    }

    // Deleting any single L1 or L2 file leaves the latest state restorable.
    let latest = digest(&db);
    for level in [1u8, 2] {
        for f in files[&level].clone() {
            let p = file_path(&replica, level, f);
            let saved = fs::read(&p).unwrap();
            fs::remove_file(&p).unwrap();
            restore_and_check(&[&url], &dir.path().join(format!("miss-{level}-{}.db", f.0)), latest);
            fs::write(&p, saved).unwrap();
        }
    }
}

#[test]
fn retention_removes_old_files_and_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("sluice.yml");
    level_config(&cfg, &db, &replica, "2s", "4s", "1s");
    let d = Daemon::with_config(&cfg, &dir.path().join("log"));
    let url = file_url(&replica);
    let mut seen_snapshots = std::collections::BTreeSet::new();
    for round in 0..6u32 {
        write(&db, &["steps", &(round * 2).to_string(), &(round * 2 + 2).to_string()]);
        sleep(Duration::from_millis(1500));
        // The latest state stays restorable while retention runs.
        let out = dir.path().join(format!("during-{round}.db"));
        let o = sluice(&["restore", "-integrity-check", "full", "-o", out.to_str().unwrap(), &url]);
        assert!(o.status.success(), "restore during retention: {}", String::from_utf8_lossy(&o.stderr));
        seen_snapshots.extend(listing(&replica).get(&9).cloned().unwrap_or_default());
    }
    wait_caught_up(&db, &replica);
    sleep(Duration::from_millis(2500));
    d.wait_for_log("retention deleted files", Duration::from_secs(60));
    d.stop();

    let files = listing(&replica);
    let snaps = &files[&9];
    assert!(snaps.len() < seen_snapshots.len(), "old snapshots were deleted: now {snaps:?}, seen {seen_snapshots:?}");
    // Snapshot files that remain are recent: none older than the retention (plus a tick).
    for s in snaps {
        let age = fs::metadata(file_path(&replica, 9, *s)).unwrap().modified().unwrap().elapsed().unwrap();
        assert!(age < Duration::from_secs(4 + 3), "snapshot {s:?} is {age:?} old");
    }
    // L0 keeps only what L1 has not covered or is younger than l0-retention, and
    // local copies went with the remote ones.
    let l1_max = files[&1].last().unwrap().1;
    let l0 = &files[&0];
    assert!(l0.len() < replica_l0_max(&replica) as usize, "old L0 files were deleted: {l0:?}");
    let local: Vec<String> = fs::read_dir(dir.path().join(".app.db-litestream/ltx/0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(local.len() <= l0.len() + 1, "local L0 files are pruned too: {local:?} vs {l0:?}");
    assert!(l0.last().unwrap().1 >= l1_max);
    restore_and_check(&[&url], &dir.path().join("final.db"), digest(&db));
}

#[test]
fn once_with_snapshot_and_retention_and_restore_if_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    write(&db, &["steps", "0", "3"]);
    let url = file_url(&replica);
    let dbs = db.to_str().unwrap();
    let o = sluice(&["replicate", "-once", "-force-snapshot", dbs, &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(listing(&replica).contains_key(&9), "-force-snapshot wrote a snapshot");
    let o = sluice(&["replicate", "-force-snapshot", dbs, &url]);
    assert!(!o.status.success(), "-force-snapshot needs -once");

    // The database is lost; replicate -restore-if-db-not-exists brings it back first
    // (and then replicates it, which writes to sluice's helper table).
    let expected = digest_app(&db);
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{dbs}{suffix}"));
    }
    fs::remove_dir_all(dir.path().join(".app.db-litestream")).unwrap();
    let o = sluice(&["replicate", "-once", "-restore-if-db-not-exists", dbs, &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(digest_app(&db), expected);
    integrity_ok(&db);
    // Replication continues the replica's TXID sequence after the restore.
    write(&db, &["step", "4"]);
    let before = replica_l0_max(&replica);
    let o = sluice(&["replicate", "-once", dbs, &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(replica_l0_max(&replica) > before);
    restore_and_check(&[&url], &dir.path().join("r.db"), digest(&db));
}

/// `restore -f` keeps a readable copy current as the source changes, and resumes
/// from `<copy>-txid` after a restart.
#[test]
fn follow_mode_keeps_a_copy_current() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("sluice.yml");
    level_config(&cfg, &db, &replica, "1h", "1h", "1h");
    let d = Daemon::with_config(&cfg, &dir.path().join("log"));
    write(&db, &["steps", "0", "3"]);
    wait_replica_settled(&replica, Duration::from_millis(300));
    let copy = dir.path().join("copy.db");
    let url = file_url(&replica);
    let start_follower = || {
        std::process::Command::new(sluice_bin())
            .args(["restore", "-f", "-follow-interval", "100ms", "-o", copy.to_str().unwrap(), &url])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let caught_up = |want: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let txid = fs::read_to_string(dir.path().join("copy.db-txid"))
                .ok()
                .and_then(|t| u64::from_str_radix(t.trim(), 16).ok());
            if txid == Some(want) {
                return;
            }
            sleep(Duration::from_millis(50));
        }
        panic!("the copy did not reach TXID {want}");
    };
    let stop = |mut c: std::process::Child| {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        assert!(c.wait().unwrap().success());
    };
    let follower = start_follower();
    for round in 0..3 {
        write(&db, &["steps", &(3 + round * 2).to_string(), &(5 + round * 2).to_string()]);
        let want = wait_caught_up(&db, &replica);
        caught_up(want);
        integrity_ok(&copy);
        assert_eq!(digest(&copy), digest(&db), "the copy follows the source (round {round})");
    }
    stop(follower);
    // Changes made while the follower is down are applied when it resumes.
    write(&db, &["steps", "9", "11"]);
    let want = wait_caught_up(&db, &replica);
    let follower = start_follower();
    caught_up(want);
    assert_eq!(digest(&copy), digest(&db));
    stop(follower);
    d.stop();
}

/// `verify-compaction` checks each compacted level, and `validation.interval` lists
/// every level periodically and names a gap (here, an L1 file deleted behind the
/// daemon's back) in a warning.
#[test]
fn validation_and_verify_compaction_report_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    let cfg = dir.path().join("sluice.yml");
    level_config(&cfg, &db, &replica, "1h", "1h", "1h");
    let text = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, format!("verify-compaction: true\nvalidation:\n  interval: 500ms\n{text}")).unwrap();
    let d = Daemon::with_config(&cfg, &dir.path().join("log"));
    // Three L1 files, so that deleting the middle one leaves a gap.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut step = 0;
    while listing(&replica).get(&1).map_or(0, |v| v.len()) < 3 {
        assert!(std::time::Instant::now() < deadline, "no three L1 files: {:?}", listing(&replica));
        write(&db, &["step", &step.to_string()]);
        step += 1;
        sleep(Duration::from_millis(700));
    }
    d.wait_for_log("compaction verified", Duration::from_secs(30));
    let l1 = listing(&replica)[&1].clone();
    let middle = l1[1];
    fs::remove_file(file_path(&replica, 1, middle)).unwrap();
    let want = format!("validation: level 1: gap between {}", sluice::ltx::format_filename(l1[0].0, l1[0].1));
    d.wait_for_log(&want, Duration::from_secs(30));
    d.stop();
}

/// Follow mode retries a download that fails, as it retries a failed listing: a
/// new level-0 file that does not verify for a while (a damaged copy stands in
/// its place, as a partial or broken download would) is logged and tried again at
/// the next interval, and once it is whole the copy reaches it and equals the
/// source. (It used to give up at the first failed download.)
#[test]
fn follow_mode_retries_a_failed_download() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let full = dir.path().join("full");
    write(&db, &["steps", "0", "3"]);
    let o = sluice(&["replicate", "-once", db.to_str().unwrap(), &file_url(&full)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = digest(&db);
    write(&db, &["steps", "3", "5"]);
    let o = sluice(&["replicate", "-once", db.to_str().unwrap(), &file_url(&full)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The followed replica: every file but the newest, which comes later, damaged.
    let replica = dir.path().join("replica");
    fs::create_dir_all(replica.join("ltx/0")).unwrap();
    let mut files: Vec<PathBuf> = fs::read_dir(full.join("ltx/0")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let newest = files.pop().unwrap();
    for f in &files {
        fs::copy(f, replica.join("ltx/0").join(f.file_name().unwrap())).unwrap();
    }
    let copy = dir.path().join("copy.db");
    let url = file_url(&replica);
    let log = dir.path().join("follow.log");
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follower = Killed(
        std::process::Command::new(sluice_bin())
            .args(["restore", "-f", "-follow-interval", "100ms", "-o", copy.to_str().unwrap(), &url])
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let follower = &mut follower.0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&log).unwrap_or_default().contains("following") {
        assert!(follower.try_wait().unwrap().is_none(), "the follower stopped:\n{}", fs::read_to_string(&log).unwrap());
        assert!(std::time::Instant::now() < deadline, "the follower did not start following");
        sleep(Duration::from_millis(50));
    }
    assert_eq!(digest(&copy), first);
    let blocked = replica.join("ltx/0").join(newest.file_name().unwrap());
    let mut damaged = fs::read(&newest).unwrap();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    fs::write(&blocked, &damaged).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&log).unwrap_or_default().contains("retrying") {
        assert!(follower.try_wait().unwrap().is_none(), "the follower gave up:\n{}", fs::read_to_string(&log).unwrap());
        assert!(std::time::Instant::now() < deadline, "no retry logged:\n{}", fs::read_to_string(&log).unwrap());
        sleep(Duration::from_millis(50));
    }
    fs::copy(&newest, &blocked).unwrap();
    let want = sluice::ltx::parse_filename(&newest.file_name().unwrap().to_string_lossy()).unwrap().1;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let txid = fs::read_to_string(dir.path().join("copy.db-txid"))
            .ok()
            .and_then(|t| u64::from_str_radix(t.trim(), 16).ok());
        if txid == Some(want) {
            break;
        }
        assert!(follower.try_wait().unwrap().is_none(), "the follower stopped:\n{}", fs::read_to_string(&log).unwrap());
        assert!(std::time::Instant::now() < deadline, "the copy never reached TXID {want}");
        sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(follower.id() as i32, libc::SIGTERM) };
    assert!(follower.wait().unwrap().success());
    integrity_ok(&copy);
    assert_eq!(digest(&copy), digest(&db));
}

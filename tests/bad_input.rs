//! Bad input gets a clear one-line error and a non-zero exit, never a panic, a hang
//! or a partial output file.

mod support;

use std::fs;
use std::path::Path;

use support::*;

/// A small file replica made by sluice itself: returns (dir guard, db, replica dir).
fn make_replica() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let replica = dir.path().join("replica");
    write(&db, &["init", "4096"]);
    write(&db, &["step", "0"]);
    write(&db, &["step", "3"]);
    let cfg = dir.path().join("sluice.yml");
    write_config(&cfg, &db, &file_url(&replica), "");
    let o = sluice(&["replicate", "-once", "-config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir, db, replica)
}

/// As [`make_replica`], with two more syncs: three level-0 files.
fn make_replica_of_three_syncs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let (dir, db, replica) = make_replica();
    let cfg = dir.path().join("sluice.yml");
    for step in ["5", "6"] {
        write(&db, &["step", step]);
        let o = sluice(&["replicate", "-once", "-config", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    (dir, db, replica)
}

fn assert_no_output(out: &Path) {
    assert!(!out.exists(), "{} must not exist after a failed restore", out.display());
    assert!(!restore_tmp(out).exists(), "no temporary file may be left behind");
}

fn restore_tmp(out: &Path) -> std::path::PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".tmp");
    s.into()
}

#[test]
fn missing_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nope.db");
    let o = sluice(&["replicate", db.to_str().unwrap(), &file_url(&dir.path().join("r"))]);
    assert_one_line_error(&o, "does not exist");
}

#[test]
fn non_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("notes.txt");
    fs::write(&db, "this is not a database, just some notes\n").unwrap();
    let o = sluice(&["replicate", db.to_str().unwrap(), &file_url(&dir.path().join("r"))]);
    assert_one_line_error(&o, "is not an SQLite database");
}

#[test]
fn unknown_replica_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let o = sluice(&["replicate", db.to_str().unwrap(), "ftp://example.com/backups"]);
    assert_one_line_error(&o, "unknown replica URL scheme \"ftp\"");
    let o = sluice(&["restore", "-o", dir.path().join("x.db").to_str().unwrap(), "ftp://example.com/b"]);
    assert_one_line_error(&o, "unknown replica URL scheme");
}

#[test]
fn malformed_config() {
    let dir = tempfile::tempdir().unwrap();
    let o = sluice(&["replicate", "-config", dir.path().join("missing.yml").to_str().unwrap()]);
    assert_one_line_error(&o, "cannot read config file");
    let cfg = dir.path().join("bad.yml");
    fs::write(&cfg, "dbs:\n  - path: /tmp/x.db\n    replica: [unclosed\n").unwrap();
    let o = sluice(&["replicate", "-config", cfg.to_str().unwrap()]);
    assert_one_line_error(&o, "invalid config file");
    fs::write(&cfg, "dbs:\n  - path: /tmp/x.db\n    monitor-interval: soon\n    replica:\n      url: file:///tmp/r\n")
        .unwrap();
    let o = sluice(&["replicate", "-config", cfg.to_str().unwrap()]);
    assert_one_line_error(&o, "monitor-interval");
    fs::write(&cfg, "addr: 9090\ndbs:\n  - path: /tmp/x.db\n    replica:\n      url: file:///tmp/r\n").unwrap();
    let o = sluice(&["replicate", "-config", cfg.to_str().unwrap()]);
    assert_one_line_error(&o, "invalid addr \"9090\"");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    fs::write(
        &cfg,
        format!("addr: 127.0.0.1:{port}\ndbs:\n  - path: /tmp/x.db\n    replica:\n      url: file:///tmp/r\n"),
    )
    .unwrap();
    let o = sluice(&["replicate", "-config", cfg.to_str().unwrap()]);
    assert_one_line_error(&o, "cannot listen on addr");
}

#[test]
fn empty_replica() {
    let dir = tempfile::tempdir().unwrap();
    let replica = dir.path().join("empty");
    fs::create_dir_all(&replica).unwrap();
    let out = dir.path().join("out.db");
    let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    assert_one_line_error(&o, "no backup files found");
    assert_no_output(&out);
    // -if-replica-exists turns "nothing to restore" into success, still with no output.
    let o = sluice(&["restore", "-if-replica-exists", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    assert!(o.status.success());
    assert_no_output(&out);
}

fn newest_l0(replica: &Path) -> std::path::PathBuf {
    let txid = replica_l0_max(replica);
    replica.join(format!("ltx/0/{txid:016x}-{txid:016x}.ltx"))
}

#[test]
fn truncated_ltx_file() {
    let (dir, _db, replica) = make_replica();
    let victim = newest_l0(&replica);
    let bytes = fs::read(&victim).unwrap();
    fs::write(&victim, &bytes[..bytes.len() - 10]).unwrap();
    let out = dir.path().join("out.db");
    let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    let err = assert_one_line_error(&o, "truncated");
    assert!(err.contains(&victim.file_name().unwrap().to_string_lossy().to_string()), "names the file: {err}");
    assert_no_output(&out);
}

#[test]
fn bit_flipped_ltx_file() {
    let (dir, _db, replica) = make_replica();
    let victim = replica.join("ltx/0/0000000000000001-0000000000000001.ltx");
    let mut bytes = fs::read(&victim).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    fs::write(&victim, &bytes).unwrap();
    let out = dir.path().join("out.db");
    let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    let err = assert_one_line_error(&o, "0000000000000001-0000000000000001.ltx");
    assert!(err.contains("corrupt") || err.contains("checksum"), "names the fault: {err}");
    assert_no_output(&out);
}

/// A well-formed file (its own checksum is right) whose recorded database checksum
/// is not what the chain produces: what a capture that missed a change writes. The
/// restore refuses it, naming the file, and leaves no output.
#[test]
fn database_checksum_mismatch() {
    let (dir, _db, replica) = make_replica();
    let victim = newest_l0(&replica);
    let mut dec = sluice::ltx::Decoder::new(fs::File::open(&victim).unwrap(), "victim").unwrap();
    let mut header = dec.header().clone();
    assert_ne!(header.db_checksum, 0, "sluice records the database checksum in every file");
    header.db_checksum ^= 0x10;
    let mut pages = Vec::new();
    let mut buf = Vec::new();
    while let Some(pgno) = dec.next_page(&mut buf).unwrap() {
        pages.push((pgno, buf.clone()));
    }
    let mut enc = sluice::ltx::Encoder::new(Vec::new(), header).unwrap();
    for (pgno, data) in &pages {
        enc.write_page(*pgno, data).unwrap();
    }
    fs::write(&victim, enc.finish().unwrap().0).unwrap();
    let out = dir.path().join("out.db");
    let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    let err = assert_one_line_error(&o, "does not match the checksum recorded");
    assert!(err.contains(&victim.file_name().unwrap().to_string_lossy().to_string()), "names the file: {err}");
    assert_no_output(&out);
}

#[test]
fn existing_output_is_not_overwritten_without_force() {
    let (dir, db, replica) = make_replica();
    let out = dir.path().join("out.db");
    fs::write(&out, "precious").unwrap();
    let o = sluice(&["restore", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    assert_one_line_error(&o, "already exists");
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    let o = sluice(&["restore", "-if-db-not-exists", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    assert!(o.status.success());
    assert_eq!(fs::read(&out).unwrap(), b"precious");
    let o = sluice(&["restore", "-force", "-o", out.to_str().unwrap(), &file_url(&replica)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(digest(&out), digest(&db));
}

#[test]
fn restore_by_database_path_uses_the_config() {
    let (dir, db, replica) = make_replica();
    let cfg = dir.path().join("sluice.yml");
    let expected = digest(&db);
    // Restoring onto the live path is refused; the config's replica is found by path.
    let o = sluice(&["restore", "-config", cfg.to_str().unwrap(), db.to_str().unwrap()]);
    assert_one_line_error(&o, "already exists");
    let out = dir.path().join("copy.db");
    let o = sluice(&["restore", "-config", cfg.to_str().unwrap(), "-o", out.to_str().unwrap(), db.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(digest(&out), expected);
    assert!(replica.join("ltx/0").exists());
}

/// Too low a limit on open files is named, with the fix, before anything starts
/// (the soft limit is raised to the hard one first, so only a low hard limit fails).
#[test]
fn too_few_open_files() {
    let (dir, db, replica) = make_replica();
    let script = format!("ulimit -n 20 && exec {} replicate {} {}", sluice_bin(), db.display(), file_url(&replica));
    let o = bounded_output(std::process::Command::new("sh").arg("-c").arg(&script).current_dir(dir.path()), &script);
    let err = assert_one_line_error(&o, "RLIMIT_NOFILE");
    assert!(err.contains("limit is 20") && err.contains("ulimit -n"), "names the limit and the fix: {err}");
}

/// `sluice verify`, the restore drill: passes a good replica (with true SQL
/// assertions, in one line or JSON), and fails, non-zero with one line naming the
/// cause, on a false assertion, on a flipped byte in an LTX file and on a missing
/// file. It never changes the replica.
#[test]
fn verify_passes_a_good_replica_and_fails_a_damaged_one() {
    let (dir, _db, replica) = make_replica_of_three_syncs();
    let url = file_url(&replica);
    let listing = |r: &std::path::Path| {
        let mut v: Vec<(String, Vec<u8>)> = Vec::new();
        for level in fs::read_dir(r.join("ltx")).unwrap().flatten() {
            for f in fs::read_dir(level.path()).unwrap().flatten() {
                v.push((f.path().display().to_string(), fs::read(f.path()).unwrap()));
            }
        }
        v.sort();
        v
    };
    let before = listing(&replica);

    let o = sluice(&["verify", "-sql", "SELECT count(*) > 0 FROM items", "-sql", "SELECT 1", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(line.starts_with("ok: ") && line.contains("2 of 2 SQL assertions true"), "{line}");
    let o = sluice(&["verify", "-json", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["ok"], true, "{j}");
    assert!(j["txid"].as_str().is_some_and(|t| t.len() == 16), "{j}");

    let o = sluice(&["verify", "-sql", "SELECT count(*) = 0 FROM items", &url]);
    let err = assert_one_line_error(&o, "is false");
    assert!(err.contains("count(*) = 0"), "names the assertion: {err}");
    assert_eq!(listing(&replica), before, "verify changed the replica");

    // A flipped byte in the newest level-0 file.
    let damaged = dir.path().join("damaged");
    copy_tree(&replica, &damaged);
    let newest = newest_file(&damaged.join("ltx/0"));
    let mut bytes = fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&newest, bytes).unwrap();
    // Without a snapshot beside it, the restore must read the damaged file.
    let _ = fs::remove_dir_all(damaged.join("ltx/9"));
    let _ = fs::remove_dir_all(damaged.join("ltx/1"));
    let o = sluice(&["verify", &file_url(&damaged)]);
    let err = assert_one_line_error(&o, "verify of");
    let name = newest.file_name().unwrap().to_string_lossy().to_string();
    assert!(err.contains(&name), "names the damaged file {name}: {err}");
    let o = sluice(&["verify", "-json", &file_url(&damaged)]);
    assert!(!o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["ok"], false, "{j}");

    // A missing file in the middle of level 0.
    let holed = dir.path().join("holed");
    copy_tree(&replica, &holed);
    let _ = fs::remove_dir_all(holed.join("ltx/9"));
    let _ = fs::remove_dir_all(holed.join("ltx/1"));
    let mut l0: Vec<_> = fs::read_dir(holed.join("ltx/0")).unwrap().flatten().map(|e| e.path()).collect();
    l0.sort();
    assert!(l0.len() >= 3, "the replica needs a file in the middle: {l0:?}");
    fs::remove_file(&l0[1]).unwrap();
    let o = sluice(&["verify", &file_url(&holed)]);
    assert_one_line_error(&o, "verify of");
}

/// `verify` reads every LTX file in the replica, not only those a restore would:
/// a flipped byte in the newest level-0 file fails it even when a snapshot covers
/// that file (the restore plan is the snapshot alone). The output says how many
/// files were checked; `-fast` checks only the plan's files, passes, and says so.
#[test]
fn verify_checks_files_outside_the_restore_plan() {
    let (dir, _db, replica) = make_replica_of_three_syncs();
    let cfg = dir.path().join("sluice.yml");
    let o = sluice(&["replicate", "-once", "-force-snapshot", "-config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let url = file_url(&replica);
    let files: usize =
        ["0", "9"].iter().map(|l| fs::read_dir(replica.join("ltx").join(l)).map_or(0, |d| d.count())).sum();
    let o = sluice(&["verify", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(line.contains(&format!("all {files} LTX files checked")), "{line}");

    let newest = newest_file(&replica.join("ltx/0"));
    let plan = sluice(&["restore", "-dry-run", "-o", dir.path().join("x.db").to_str().unwrap(), &url]);
    let plan = String::from_utf8_lossy(&plan.stdout).to_string();
    let name = newest.file_name().unwrap().to_string_lossy().to_string();
    assert!(!plan.contains(&name), "the restore plan does not read the newest L0 file:\n{plan}");
    let mut bytes = fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&newest, bytes).unwrap();
    let o = sluice(&["verify", &url]);
    let err = assert_one_line_error(&o, "verify of");
    assert!(err.contains(&name) && err.contains("1 of"), "names the damaged file {name}: {err}");
    let o = sluice(&["verify", "-json", &url]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["ok"], false, "{j}");
    let o = sluice(&["verify", "-fast", &url]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8_lossy(&o.stdout);
    assert!(line.contains("-fast: only the restore plan"), "{line}");
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn newest_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut v: Vec<_> = fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect();
    v.sort();
    v.pop().unwrap()
}

/// A key Sluice does not know gets a warning naming it and the key that was
/// probably meant; start-up goes on, as Litestream's does.
#[test]
fn unknown_config_keys_are_named_with_the_key_probably_meant() {
    let (dir, db, replica) = make_replica();
    let cfg = dir.path().join("typo.yml");
    fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    monitor-intervall: 50ms\n    replica:\n      url: {}\n      sync-intervall: 50ms\n",
            db.display(),
            file_url(&replica)
        ),
    )
    .unwrap();
    let o = sluice(&["replicate", "-once", "-config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("unknown config key `dbs[0].replica.sync-intervall`; did you mean `sync-interval`?"), "{err}");
    assert!(err.contains("unknown config key `dbs[0].monitor-intervall`; did you mean `monitor-interval`?"), "{err}");
}

/// An argument that is not UTF-8 (a file name in another encoding) is one error
/// line naming it, never a panic.
#[test]
fn a_non_utf8_argument_is_one_line() {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.db");
    let o = bounded_output(
        std::process::Command::new(sluice_bin()).arg("replicate").arg(name).arg("file:///tmp/r"),
        "sluice replicate <non-UTF-8>",
    );
    assert_eq!(o.status.code(), Some(2));
    let err = assert_one_line_error(&o, "not valid UTF-8");
    assert!(err.contains("caf\u{fffd}.db"), "names the argument: {err}");
}

/// Values too large for any clock or size: one line naming the key, never a panic.
#[test]
fn huge_durations_and_sizes_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let cfg = dir.path().join("sluice.yml");
    for (key, needle) in [
        ("    monitor-interval: 99999999999999999h\n", "too long"),
        ("    checkpoint-interval: 1e999s\n", "invalid duration"),
        ("    replica:\n      url: s3://b/p\n      part-size: 99999999TiB\n", "size"),
        ("    replica:\n      url: s3://b/p?partSize=99999999999999999999999\n", "positive whole number"),
    ] {
        let replica = if key.contains("replica:") {
            String::new()
        } else {
            format!("    replica:\n      url: {}\n", file_url(&dir.path().join("r")))
        };
        fs::write(&cfg, format!("dbs:\n  - path: {}\n{key}{replica}", db.display())).unwrap();
        let o = sluice(&["replicate", "-once", "-config", cfg.to_str().unwrap()]);
        assert_one_line_error(&o, needle);
    }
}

/// A local state directory that cannot be read (here it is not a directory; as
/// root, permissions would not stop us) is an error, not an empty state: taken as
/// empty, TXIDs would restart at 1 and fork the replica's history. The replica is
/// left exactly as it was.
#[test]
fn an_unreadable_state_directory_is_an_error_not_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    let replica = dir.path().join("replica");
    let url = file_url(&replica);
    for step in ["0", "1"] {
        write(&db, &["step", step]);
        let o = sluice(&["replicate", "-once", db.to_str().unwrap(), &url]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let listing = || {
        let mut v: Vec<String> = fs::read_dir(replica.join("ltx/0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    let l0 = dir.path().join(".app.db-litestream/ltx/0");
    fs::remove_dir_all(&l0).unwrap();
    fs::write(&l0, b"not a directory").unwrap();
    write(&db, &["step", "2"]);
    let o = sluice(&["replicate", "-once", db.to_str().unwrap(), &url]);
    let err = assert_one_line_error(&o, "local state directory");
    assert!(err.contains("ltx/0"), "{err}");
    assert_eq!(listing(), before, "nothing was written to the replica");
}

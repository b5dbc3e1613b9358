//! Policy plugins end to end on a real S3 server: age encryption, the path
//! template and GFS retention together; and misbehaving plugins in the daemon.

#[path = "support/s3.rs"]
mod s3_support;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use s3_support::*;
use support::*;

const BUCKET: &str = "plugins";

fn key_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/tests/fixtures/golden.key")
}

fn all_objects(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                stack.push(p);
            } else if !name.starts_with('.') {
                out.push(p);
            }
        }
    }
    out
}

fn plugin_config(db: &Path, recipients: &Path, identity: Option<&Path>, url: &str) -> String {
    let identity = identity.map(|p| format!("      identity: {{ file: {} }}\n", p.display())).unwrap_or_default();
    format!(
        "levels:\n  - interval: 1s\nsnapshot:\n  interval: 2s\n  retention: 1h\n\
         plugins:\n\
         \x20 - name: keep\n    builtin: gfs-retention\n    config: {{ hourly: 1, daily: 1, weekly: 1, monthly: 1, keep-within: 1s }}\n\
         \x20 - name: crypt\n    builtin: age\n    secrets:\n      recipient: {{ file: {} }}\n{identity}\
         \x20 - name: paths\n    builtin: path-template\n    config:\n      template: \"{{hash}}/{{db}}/{{level}}/{{yyyy}}/{{mm}}/{{min}}-{{max}}.ltx\"\n      hash-length: 1\n\
         dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      url: {url}\n      sync-interval: 100ms\n\
         \x20     retention-plugin: keep\n      transform-plugin: crypt\n      layout-plugin: paths\n",
        recipients.display(),
        db.display()
    )
}

#[test]
fn age_path_template_and_gfs_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("s3"));
    server.create_bucket(BUCKET);
    let env = credentials_env(server.endpoint());
    let env = env_refs(&env);
    let recipients = dir.path().join("recipients.txt");
    let out = std::process::Command::new("age-keygen").arg("-y").arg(key_file()).output().unwrap();
    fs::write(&recipients, &out.stdout).unwrap();
    let db = new_db(dir.path());
    let url = format!("s3://{BUCKET}/enc");
    // The replicating host holds only the public key.
    let cfg = dir.path().join("replicate.yml");
    fs::write(&cfg, plugin_config(&db, &recipients, None, &url)).unwrap();
    let d = Daemon::start_with(&["-config", cfg.to_str().unwrap()], &dir.path().join("log"), &env);
    for s in 0..8 {
        write(&db, &["step", &s.to_string()]);
        std::thread::sleep(Duration::from_millis(400));
    }
    // GFS retention runs: with every snapshot in the same hour, only the newest ones stay.
    d.wait_for_log("retention deleted files", Duration::from_secs(60));
    d.stop();

    // Every stored object is an age file, under the template's keys.
    let objects = all_objects(&server.root.join(BUCKET));
    assert!(objects.iter().any(|o| o.to_string_lossy().contains("/0009/")), "a snapshot is stored: {objects:?}");
    for o in &objects {
        let bytes = fs::read(o).unwrap();
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{} is not an age file", o.display());
        assert!(!bytes.windows(4).any(|w| w == b"LTX1"), "{} holds LTX in clear", o.display());
        let rel = o.strip_prefix(server.root.join(BUCKET)).unwrap().to_string_lossy().to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!((parts[0], parts[2], parts.len()), ("enc", "app.db", 7), "key {rel} follows the template");
    }
    // `age -d` with the identity turns an object into a valid LTX file.
    let plain =
        std::process::Command::new("age").arg("-d").arg("-i").arg(key_file()).arg(&objects[0]).output().unwrap();
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    sluice::ltx::Decoder::new(&plain.stdout[..], "decrypted").unwrap().verify().expect("a valid LTX file");

    // Restore with the identity equals the source.
    let rcfg = dir.path().join("restore.yml");
    fs::write(&rcfg, plugin_config(&db, &recipients, Some(&key_file()), &url)).unwrap();
    let restored = dir.path().join("restored.db");
    let o = sluice_with(
        &[
            "restore",
            "-config",
            rcfg.to_str().unwrap(),
            "-integrity-check",
            "full",
            "-o",
            restored.to_str().unwrap(),
            db.to_str().unwrap(),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(digest(&restored), digest(&db));
    // Without the identity, or without the plugin, restore fails and says why.
    let o = sluice_with(
        &[
            "restore",
            "-config",
            cfg.to_str().unwrap(),
            "-o",
            dir.path().join("x.db").to_str().unwrap(),
            db.to_str().unwrap(),
        ],
        &env,
    );
    assert_one_line_error(&o, "no age identity");
    assert!(!dir.path().join("x.db").exists());
    let o = sluice_with(&["ltx", "-level", "all", &url], &env);
    assert!(o.status.success());
    // (Without the layout plugin the plain layout has no files: nothing to restore.)
    let o = sluice_with(&["restore", "-o", dir.path().join("y.db").to_str().unwrap(), &url], &env);
    assert_one_line_error(&o, "no backup files");
}

/// Misbehaving plugins in the daemon: uploads stop (nothing stored under a bad key),
/// retention deletes nothing it must keep, and the daemon keeps running.
/// A layout plugin on a file replica (both config forms): files go where the
/// template says and nowhere else, and listing, compaction, snapshots, retention
/// and restore (by Sluice, at the latest state and at an earlier TXID) find them.
#[test]
fn path_template_on_a_file_replica() {
    let dir = tempfile::tempdir().unwrap();
    let db = new_db(dir.path());
    for (form, replica_keys) in [("url", "url: file://{replica}"), ("path", "type: file\n      path: {replica}")] {
        let replica = dir.path().join(format!("replica-{form}"));
        let replica_keys = replica_keys.replace("{replica}", &replica.display().to_string());
        let cfg = dir.path().join(format!("{form}.yml"));
        let config = |retention: &str| {
            let text = format!(
                "levels:\n  - interval: 1s\nsnapshot:\n  interval: 2s\n  retention: {retention}\n\
                 plugins:\n  - name: paths\n    builtin: path-template\n    config:\n      template: \"{{db}}/{{yyyy}}-{{mm}}/L{{level}}/{{min}}-{{max}}.ltx\"\n\
                 dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      {replica_keys}\n      sync-interval: 100ms\n      layout-plugin: paths\n",
                db.display()
            );
            fs::write(&cfg, text).unwrap();
        };
        config("1h");
        let d = Daemon::with_config(&cfg, &dir.path().join(format!("{form}.log")));
        let l0_files = || -> Vec<PathBuf> {
            all_objects(&replica).into_iter().filter(|p| p.to_string_lossy().contains("/L0000/")).collect()
        };
        let newest_l0 = || {
            l0_files()
                .iter()
                .filter_map(|p| sluice::ltx::parse_filename(&p.file_name()?.to_string_lossy()))
                .map(|(_, max)| max)
                .max()
        };
        let mut points = Vec::new();
        for s in 0..6 {
            write(&db, &["step", &s.to_string()]);
            let point = loop {
                wait_until_caught_up(|| l0_files_caught_up(&db, l0_files()), form);
                let (txid, dg) = (newest_l0().unwrap(), digest(&db));
                if l0_files_caught_up(&db, l0_files()) && newest_l0() == Some(txid) {
                    break (txid, dg);
                }
            };
            points.push(point);
            std::thread::sleep(Duration::from_millis(700));
        }
        // Let compaction and snapshots place files at levels 1 and 9 (a busy machine
        // may need longer).
        let in_level = |l: &str| all_objects(&replica).iter().filter(|p| p.to_string_lossy().contains(l)).count();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while (in_level("/L0001/") == 0 || in_level("/L0009/") < 2) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = d.stop();
        assert!(log.contains("compacted"), "levels were compacted:\n{log}");

        // Every file sits where the template puts it; Litestream's layout is unused.
        let files = all_objects(&replica);
        assert!(!replica.join("ltx").exists(), "nothing under ltx/: {files:?}");
        let month = chrono::Utc::now().format("%Y-%m").to_string();
        let mut levels = std::collections::BTreeSet::new();
        for f in &files {
            let rel = f.strip_prefix(&replica).unwrap().to_string_lossy().to_string();
            let parts: Vec<&str> = rel.split('/').collect();
            assert_eq!((parts.len(), parts[0]), (4, "app.db"), "{rel} follows the template");
            assert!(parts[1] == month || parts[1] < month.as_str(), "{rel}: date part");
            levels.insert(parts[2].to_string());
            assert!(sluice::ltx::parse_filename(parts[3]).is_some(), "{rel}");
        }
        for l in ["L0000", "L0001", "L0009"] {
            assert!(levels.contains(l), "{l} holds files: {files:?}");
        }

        // `ltx` lists through the plugin; restores equal the source.
        let o = sluice(&["ltx", "-config", cfg.to_str().unwrap(), "-level", "all", db.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let listed = String::from_utf8_lossy(&o.stdout).lines().count();
        assert!(listed > files.len(), "ltx lists every file (plus a header): {listed} lines, {} files", files.len());
        let restore = |extra: &[&str], out: &Path| {
            let mut args = vec!["restore", "-config", cfg.to_str().unwrap(), "-o", out.to_str().unwrap()];
            args.extend_from_slice(extra);
            args.push(db.to_str().unwrap());
            let o = sluice(&args);
            assert!(o.status.success(), "restore {extra:?}: {}", String::from_utf8_lossy(&o.stderr));
            integrity_ok(out);
            digest(out)
        };
        assert_eq!(restore(&[], &dir.path().join(format!("{form}-latest.db"))), digest(&db));
        let (txid, dg) = points[points.len() - 2];
        assert_eq!(restore(&["-txid", &format!("{txid:016x}")], &dir.path().join(format!("{form}-txid.db"))), dg);

        // Retention deletes through the plugin's keys: every snapshot but the newest.
        assert!(in_level("/L0009/") >= 2);
        config("1ms");
        let o = sluice(&["replicate", "-once", "-enforce-retention", "-config", cfg.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(in_level("/L0009/"), 1, "{:?}", all_objects(&replica));
        assert_eq!(restore(&[], &dir.path().join(format!("{form}-after-retention.db"))), digest(&db));
    }
}

#[test]
fn misbehaving_plugins_in_the_daemon_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(&dir.path().join("s3"));
    server.create_bucket(BUCKET);
    let env = credentials_env(server.endpoint());
    let env = env_refs(&env);
    let layout = dir.path().join("misbehave-layout.wasm");
    fs::write(&layout, plugins::test_plugin("misbehave-layout").unwrap()).unwrap();
    let retention = dir.path().join("misbehave-retention.wasm");
    fs::write(&retention, plugins::test_plugin("misbehave-retention").unwrap()).unwrap();
    let db = new_db(dir.path());

    // A layout that escapes the replica's path: nothing is uploaded anywhere.
    let cfg = dir.path().join("escape.yml");
    fs::write(
        &cfg,
        format!(
            "plugins:\n  - name: bad\n    path: {}\n    config: {{ mode: escape }}\n\
             dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      url: s3://{BUCKET}/esc\n      sync-interval: 100ms\n      layout-plugin: bad\n",
            layout.display(),
            db.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(sluice_bin())
        .args(["replicate", "-config", cfg.to_str().unwrap()])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL_S3", server.endpoint())
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    write(&db, &["step", "0"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "the daemon keeps running");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("not a clean relative key"), "the plugin's fault is named:\n{log}");
    assert!(all_objects(&server.root).is_empty(), "nothing was uploaded: {:?}", all_objects(&server.root));

    // A retention plugin that asks to delete the newest snapshot: refused, logged.
    let cfg = dir.path().join("newest.yml");
    fs::write(
        &cfg,
        format!(
            "snapshot:\n  interval: 1s\n  retention: 1h\nplugins:\n  - name: greedy\n    path: {}\n    config: {{ mode: newest }}\n\
             dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      url: s3://{BUCKET}/ret\n      sync-interval: 100ms\n      retention-plugin: greedy\n",
            retention.display(),
            db.display()
        ),
    )
    .unwrap();
    let d = Daemon::start_with(&["-config", cfg.to_str().unwrap()], &dir.path().join("log"), &env);
    for s in 1..4 {
        write(&db, &["step", &s.to_string()]);
        std::thread::sleep(Duration::from_millis(1100));
    }
    d.wait_for_log("retention refused", Duration::from_secs(60));
    d.stop();
    assert!(fs::read_dir(server.root.join(BUCKET).join("ret/0009")).unwrap().count() >= 2, "no snapshot was deleted");
    restore_and_check_with(&[&format!("s3://{BUCKET}/ret")], &dir.path().join("r.db"), digest(&db), &env);
}

/// `sluice plugin check` reports kind and version, validates settings, runs the
/// sample scenario, and fails clearly on bad plugins and bad answers.
#[test]
fn plugin_check_command() {
    let o = sluice(&["plugin", "check", "gfs-retention", "-set", "daily=3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("kind:     retention (sluice:policy@0.1.0"), "{out}");
    assert!(out.contains("the host would accept this answer"), "{out}");
    let o = sluice(&["plugin", "check", "gfs-retention", "-set", "daily=lots"]);
    assert_one_line_error(&o, "invalid config for plugin gfs-retention");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wasm");
    fs::write(&bad, plugins::test_plugin("misbehave-retention").unwrap()).unwrap();
    let o = sluice(&["plugin", "check", bad.to_str().unwrap(), "-set", "mode=newest"]);
    assert_one_line_error(&o, "newest snapshot");
    let o = sluice(&["plugin", "check", bad.to_str().unwrap(), "-set", "mode=loop"]);
    assert_one_line_error(&o, "time limit");
    let not_wasm = dir.path().join("notes.wasm");
    fs::write(&not_wasm, "# not a component").unwrap();
    let o = sluice(&["plugin", "check", not_wasm.to_str().unwrap()]);
    assert_one_line_error(&o, "not a valid WebAssembly component");
}

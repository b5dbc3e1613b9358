//! Deliberately misbehaving plugins, run through the real host runtime: each limit
//! fires, the error names it, and the next operation on a fresh instance succeeds.

use std::time::Duration;

use sluice::plugin::{Kind, Limits, Plugin, PluginFile, Runtime, Settings};

fn load(name: &str, limits: Limits) -> Plugin {
    let wasm = plugins::test_plugin(name).or_else(|| plugins::builtin(name)).unwrap();
    Runtime::global().unwrap().load(name, wasm, Some(limits)).unwrap()
}

fn tight() -> Limits {
    Limits { memory: 16 << 20, deadline: Duration::from_millis(300), output: 1 << 20 }
}

fn mode(m: &str) -> Settings {
    vec![("mode".to_string(), m.to_string())]
}

fn files() -> Vec<PluginFile> {
    vec![
        PluginFile { level: 0, min_txid: 1, max_txid: 1, size: 10, created_ms: 1000 },
        PluginFile { level: 9, min_txid: 1, max_txid: 1, size: 10, created_ms: 1000 },
    ]
}

fn assert_recovers(p: &Plugin) {
    let ok = p.select_deletions(&mode("ok"), &files(), 0).expect("the next operation succeeds");
    assert!(ok.is_empty());
}

#[test]
fn kinds_and_versions_are_reported() {
    let p = load("misbehave-retention", tight());
    assert_eq!((p.kind, p.version.as_str()), (Kind::Retention, "0.1.0"));
    assert_eq!(load("misbehave-layout", tight()).kind, Kind::Layout);
    assert_eq!(load("misbehave-transform", tight()).kind, Kind::Transform);
}

#[test]
fn endless_loop_hits_the_deadline() {
    let p = load("misbehave-retention", tight());
    let started = std::time::Instant::now();
    let e = p.select_deletions(&mode("loop"), &files(), 0).unwrap_err().to_string();
    assert!(e.contains("time limit"), "{e}");
    assert!(e.contains("misbehave-retention"), "names the plugin: {e}");
    assert!(started.elapsed() < Duration::from_secs(5), "stopped near the deadline, took {:?}", started.elapsed());
    assert_recovers(&p);
}

#[test]
fn deadline_obeyed_by_a_quick_plugin() {
    // The deadline is per call: quick calls, one after another for several times
    // the deadline in all, each succeed. (The deadline leaves room for the other
    // tests running beside this one on a small machine; a quick call takes a
    // millisecond or two.)
    let limits = tight();
    let p = load("misbehave-retention", limits);
    let started = std::time::Instant::now();
    let mut calls = 0;
    while calls < 20 || started.elapsed() < 4 * limits.deadline {
        assert_recovers(&p);
        calls += 1;
    }
}

#[test]
fn memory_growth_hits_the_memory_limit() {
    let p = load("misbehave-retention", tight());
    let e = p.select_deletions(&mode("grow"), &files(), 0).unwrap_err().to_string();
    assert!(e.contains("memory limit"), "{e}");
    assert_recovers(&p);
}

#[test]
fn memory_limit_obeyed_within_bounds() {
    // A plugin working within its memory limit is unaffected: 2000 files in and out.
    let p = load("keep-last", tight());
    let many: Vec<PluginFile> =
        (1..=2000).map(|i| PluginFile { level: 9, min_txid: 1, max_txid: i, size: 1, created_ms: i as i64 }).collect();
    let out = p.select_deletions(&vec![("count".into(), "5".into())], &many, 0).unwrap();
    assert_eq!(out.len(), 1995);
}

#[test]
fn panic_is_contained_and_reported() {
    let p = load("misbehave-retention", tight());
    let e = p.select_deletions(&mode("panic"), &files(), 0).unwrap_err().to_string();
    assert!(e.contains("crashed (panic)"), "{e}");
    assert_recovers(&p);
}

#[test]
fn oversized_output_hits_the_output_limit() {
    let p = load("misbehave-retention", Limits { memory: 512 << 20, deadline: Duration::from_secs(10), ..tight() });
    let e = p.select_deletions(&mode("huge"), &files(), 0).unwrap_err().to_string();
    assert!(e.contains("output limit"), "{e}");
    assert_recovers(&p);
}

#[test]
fn plugin_errors_and_bad_config_are_named() {
    let p = load("misbehave-retention", tight());
    let e = p.select_deletions(&mode("err"), &files(), 0).unwrap_err().to_string();
    assert!(e.contains("fails on purpose") && e.contains("misbehave-retention"), "{e}");
    let e = p.validate(&mode("bad-config")).unwrap_err().to_string();
    assert!(e.contains("invalid config for plugin misbehave-retention"), "{e}");
    p.validate(&mode("ok")).unwrap();
}

#[test]
fn transform_misbehaviour_is_contained() {
    let p = load("misbehave-transform", Limits { memory: 512 << 20, ..tight() });
    let run = |m: &str| {
        let mut out = Vec::new();
        p.transform(true, &mode(m), &[], &mut &b"some bytes"[..], &mut out, 4096).map(|_| out)
    };
    assert!(run("loop").unwrap_err().to_string().contains("time limit"));
    assert!(run("panic").unwrap_err().to_string().contains("crashed (panic)"));
    assert!(run("err").unwrap_err().to_string().contains("fails on purpose"));
    // Producing 256 MiB takes a while: a generous deadline isolates the output limit.
    let slow = load("misbehave-transform", Limits { memory: 512 << 20, deadline: Duration::from_secs(30), ..tight() });
    let mut out = Vec::new();
    let e = slow.transform(true, &mode("huge"), &[], &mut &b"x"[..], &mut out, 4096).unwrap_err().to_string();
    assert!(e.contains("output limit"), "{e}");
    assert!(out.is_empty(), "nothing of an oversized answer reaches the output");
    assert_eq!(run("identity").unwrap(), b"some bytes");
}

#[test]
fn layout_answers_are_checked() {
    let p = load("misbehave-layout", tight());
    let f = [PluginFile { level: 1, min_txid: 2, max_txid: 5, size: 0, created_ms: 0 }];
    let e = p.keys(&mode("escape"), "app.db", &f).unwrap_err().to_string();
    assert!(e.contains("not a clean relative key"), "{e}");
    let two = [f[0], PluginFile { level: 1, min_txid: 6, max_txid: 9, size: 0, created_ms: 0 }];
    let e = p.keys(&mode("collide"), "app.db", &two).unwrap_err().to_string();
    assert!(e.contains("does not parse back"), "{e}");
    let e = p.keys(&mode("lie"), "app.db", &f).unwrap_err().to_string();
    assert!(e.contains("does not parse back"), "{e}");
    assert!(p.keys(&mode("loop"), "app.db", &f).unwrap_err().to_string().contains("time limit"));
    assert_eq!(p.keys(&mode("ok"), "app.db", &f).unwrap(), vec!["1/0000000000000002-0000000000000005".to_string()]);
}

/// A plugin built against this WIT (0.1.0) is kept as a built fixture: later,
/// additive WIT changes must still load and run it.
#[test]
fn built_fixture_from_wit_0_1_0_still_loads() {
    let wasm = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keep-last-wit-0.1.0.wasm")).unwrap();
    let p = Runtime::global().unwrap().load("keep-last-0.1.0", &wasm, None).unwrap();
    assert_eq!((p.kind, p.version.as_str()), (Kind::Retention, "0.1.0"));
    let snaps: Vec<PluginFile> =
        (1..=4).map(|i| PluginFile { level: 9, min_txid: 1, max_txid: i, size: 1, created_ms: i as i64 }).collect();
    let out = p.select_deletions(&vec![("count".into(), "2".into())], &snaps, 0).unwrap();
    assert_eq!(out.iter().map(|f| f.max_txid).collect::<Vec<_>>(), vec![1, 2]);
}

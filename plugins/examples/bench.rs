//! Prints plugin performance figures: transform throughput (MB/s), and the cost of
//! one layout call and one retention call, each including a fresh instance, as
//! every operation in the daemon gets one.
//!
//!     cargo run --release -p plugins --example bench
//!
//! (`cargo run -p plugins --example bench` also works: dependencies, wasmtime
//! included, are optimised in the dev profile too.)

use std::time::{Duration, Instant};

use sluice::plugin::{PluginFile, Runtime};

fn per_call(n: u32, mut f: impl FnMut()) -> Duration {
    f(); // warm up
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed() / n
}

fn main() {
    let rt = Runtime::new(None).expect("runtime");
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    let t = Instant::now();
    let age = rt.load("age", plugins::builtin("age").unwrap(), None).unwrap();
    println!("load age (compile, no cache)        {:>10.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let cached = Runtime::global().unwrap();
    cached.load("age", plugins::builtin("age").unwrap(), None).unwrap();
    let t = Instant::now();
    cached.load("age", plugins::builtin("age").unwrap(), None).unwrap();
    println!("load age (from the on-disk cache)   {:>10.1} ms", t.elapsed().as_secs_f64() * 1e3);

    let key = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden.key")).unwrap();
    let recipient = key.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mb = data.len() as f64 / 1e6;
    let mut stored = Vec::with_capacity(data.len() + 4096);
    let t = Instant::now();
    age.transform(true, &vec![], &[("recipient".into(), recipient)], &mut &data[..], &mut stored, 256 << 10).unwrap();
    println!("age encrypt, 64 MiB in 256 KiB chunks {:>8.1} MB/s", mb / t.elapsed().as_secs_f64());
    let mut back = Vec::with_capacity(data.len());
    let t = Instant::now();
    age.transform(false, &vec![], &[("identity".into(), key)], &mut &stored[..], &mut back, 256 << 10).unwrap();
    println!("age decrypt, 64 MiB in 256 KiB chunks {:>8.1} MB/s", mb / t.elapsed().as_secs_f64());
    assert!(back == data);
    let identity = rt.load("identity", plugins::test_plugin("misbehave-transform").unwrap(), None).unwrap();
    let mut out = Vec::with_capacity(data.len());
    let t = Instant::now();
    identity.transform(true, &vec![], &[], &mut &data[..], &mut out, 256 << 10).unwrap();
    println!("identity transform (host overhead)  {:>8.1} MB/s", mb / t.elapsed().as_secs_f64());

    let layout = rt.load("path-template", plugins::builtin("path-template").unwrap(), None).unwrap();
    let settings = vec![("template".to_string(), "{hash}/{db}/{level}/{yyyy}/{mm}/{min}-{max}.ltx".to_string())];
    let one = [PluginFile { level: 0, min_txid: 42, max_txid: 42, size: 0, created_ms: 1_795_552_803_992 }];
    let d = per_call(200, || {
        layout.keys(&settings, "app.db", &one).unwrap();
    });
    println!("layout: key + parse-back check, 1 file, fresh instance {:>8.1} µs/call", d.as_secs_f64() * 1e6);
    let many: Vec<PluginFile> =
        (1..=1000).map(|t| PluginFile { level: 0, min_txid: t, max_txid: t, size: 0, created_ms: 0 }).collect();
    let d = per_call(20, || {
        layout.keys(&settings, "app.db", &many).unwrap();
    });
    println!("layout: 1000 files in one instance  {:>8.2} µs/file", d.as_secs_f64() * 1e6 / 1000.0);

    let gfs = rt.load("gfs-retention", plugins::builtin("gfs-retention").unwrap(), None).unwrap();
    for n in [100u64, 1000] {
        let files: Vec<PluginFile> = (1..=n)
            .map(|i| PluginFile { level: 9, min_txid: 1, max_txid: i, size: 1, created_ms: i as i64 * 3_600_000 })
            .collect();
        let d = per_call(50, || {
            gfs.select_deletions(&vec![], &files, n as i64 * 3_600_000).unwrap();
        });
        println!("retention: GFS over {n:>4} snapshots, fresh instance {:>8.1} µs/call", d.as_secs_f64() * 1e6);
    }
}

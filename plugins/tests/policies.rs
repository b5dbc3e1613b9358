//! The built-in policies, run as WebAssembly components through the host runtime.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::process::Command;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use rand::{Rng, SeedableRng};
use sluice::daemon::store::vet_deletions;
use sluice::plugin::{Plugin, PluginFile, Runtime, Settings};
use sluice::replica::FileInfo;

fn builtin(name: &str) -> Plugin {
    Runtime::global().unwrap().load(name, plugins::builtin(name).unwrap(), None).unwrap()
}

fn settings(pairs: &[(&str, &str)]) -> Settings {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

// ---------------------------------------------------------------- GFS retention

fn info(f: &PluginFile) -> FileInfo {
    FileInfo {
        level: f.level,
        min_txid: f.min_txid,
        max_txid: f.max_txid,
        size: f.size,
        created_at: Utc.timestamp_millis_opt(f.created_ms).unwrap(),
    }
}

/// The expected GFS schedule, computed independently with chrono: the newest
/// snapshot of each of the N most recent hours / days / ISO weeks / months, plus
/// everything within keep-within, plus the newest.
fn expected_kept(
    snaps: &[PluginFile],
    now: i64,
    h: usize,
    d: usize,
    w: usize,
    m: usize,
    within_ms: i64,
) -> HashSet<u64> {
    let t = |f: &PluginFile| Utc.timestamp_millis_opt(f.created_ms).unwrap();
    let mut kept = HashSet::new();
    let newest_per = |key: &dyn Fn(DateTime<Utc>) -> (i32, u32, u32), n: usize, kept: &mut HashSet<u64>| {
        let mut by: BTreeMap<(i32, u32, u32), &PluginFile> = BTreeMap::new();
        for s in snaps {
            let e = by.entry(key(t(s))).or_insert(s);
            if (s.created_ms, s.max_txid) > (e.created_ms, e.max_txid) {
                *e = s;
            }
        }
        for (_, s) in by.iter().rev().take(n) {
            kept.insert(s.max_txid);
        }
    };
    newest_per(&|x| (x.year(), x.ordinal(), x.hour()), h, &mut kept);
    newest_per(&|x| (x.year(), x.ordinal(), 0), d, &mut kept);
    newest_per(&|x| (x.iso_week().year(), x.iso_week().week(), 0), w, &mut kept);
    newest_per(&|x| (x.year(), x.month(), 0), m, &mut kept);
    for s in snaps {
        if s.created_ms >= now - within_ms {
            kept.insert(s.max_txid);
        }
    }
    kept.insert(snaps.iter().map(|s| s.max_txid).max().unwrap());
    kept
}

#[test]
fn gfs_keeps_exactly_the_schedule_over_a_simulated_year() {
    let p = builtin("gfs-retention");
    let cfg = settings(&[("hourly", "24"), ("daily", "7"), ("weekly", "4"), ("monthly", "12"), ("keep-within", "2h")]);
    p.validate(&cfg).unwrap();
    // A snapshot every 3 hours for a year, TXIDs growing; level-1 files between them.
    let start = Utc.with_ymd_and_hms(2025, 11, 1, 0, 30, 0).unwrap().timestamp_millis();
    let hour = 3_600_000i64;
    let mut files = Vec::new();
    let mut txid = 1u64;
    for i in 0..(365 * 8) {
        let at = start + i * 3 * hour;
        files.push(PluginFile { level: 1, min_txid: txid + 1, max_txid: txid + 10, size: 100, created_ms: at });
        txid += 10;
        files.push(PluginFile { level: 9, min_txid: 1, max_txid: txid, size: 1000, created_ms: at + 60_000 });
    }
    files.push(PluginFile {
        level: 0,
        min_txid: txid + 1,
        max_txid: txid + 1,
        size: 10,
        created_ms: start + 365 * 24 * hour,
    });
    let now = start + 365 * 24 * hour + 600_000;
    let snaps: Vec<PluginFile> = files.iter().filter(|f| f.level == 9).copied().collect();
    let want_kept = expected_kept(&snaps, now, 24, 7, 4, 12, 2 * hour);

    let deletions = p.select_deletions(&cfg, &files, now).unwrap();
    let deleted_snaps: HashSet<u64> = deletions.iter().filter(|f| f.level == 9).map(|f| f.max_txid).collect();
    let kept: HashSet<u64> = snaps.iter().map(|s| s.max_txid).filter(|t| !deleted_snaps.contains(t)).collect();
    assert_eq!(kept, want_kept, "kept snapshots follow the GFS schedule exactly");
    assert!(kept.len() < 60, "a year of snapshots shrinks to the schedule ({} kept)", kept.len());

    // The host's check accepts the answer: the latest state stays restorable.
    let mut listing = vec![Vec::new(); 10];
    for f in &files {
        listing[f.level as usize].push(info(f));
    }
    let victims: Vec<FileInfo> = deletions.iter().map(info).collect();
    vet_deletions(&listing, &victims).expect("the GFS answer keeps the restorable chain");
}

#[test]
fn gfs_rejects_bad_settings() {
    let p = builtin("gfs-retention");
    assert!(p.validate(&settings(&[("daily", "many")])).unwrap_err().to_string().contains("daily"));
    assert!(p.validate(&settings(&[("keep-within", "2 weeks")])).is_err());
    assert!(p.validate(&settings(&[("yearly", "3")])).unwrap_err().to_string().contains("unknown setting"));
}

#[test]
fn host_refuses_unsafe_retention_answers() {
    let at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
    let mk = |level, min, max| FileInfo { level, min_txid: min, max_txid: max, size: 1, created_at: at };
    let mut listing = vec![Vec::new(); 10];
    listing[9] = vec![mk(9, 1, 5), mk(9, 1, 9)];
    listing[0] = (6..=12).map(|t| mk(0, t, t)).collect();
    // The newest snapshot, a file that does not exist, a needed L0 file: all refused.
    assert!(vet_deletions(&listing, &[mk(9, 1, 9)]).unwrap_err().contains("newest snapshot"));
    assert!(vet_deletions(&listing, &[mk(3, 7, 8)]).unwrap_err().contains("not in the replica"));
    assert!(vet_deletions(&listing, &[mk(0, 11, 11)]).unwrap_err().contains("break the chain"));
    // An old snapshot and L0 files the newest snapshot covers may go.
    assert!(vet_deletions(&listing, &[mk(9, 1, 5), mk(0, 6, 6), mk(0, 9, 9)]).is_ok());
}

// ---------------------------------------------------------------- age transform

fn identity() -> String {
    std::fs::read_to_string(format!("{FIXTURES}/golden.key")).unwrap()
}

fn recipient() -> String {
    identity().lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().trim().to_string()
}

fn age_run(encode: bool, input: &[u8], secrets: &[(String, String)], chunk: usize) -> anyhow::Result<Vec<u8>> {
    let p = builtin("age");
    let mut out = Vec::new();
    p.transform(encode, &vec![], secrets, &mut &input[..], &mut out, chunk)?;
    Ok(out)
}

fn enc_secrets() -> Vec<(String, String)> {
    vec![("recipient".into(), recipient())]
}

fn dec_secrets() -> Vec<(String, String)> {
    vec![("identity".into(), identity())]
}

#[test]
fn age_decrypts_the_age_cli_golden_vector() {
    let stored = std::fs::read(format!("{FIXTURES}/golden.age")).unwrap();
    let plain = age_run(false, &stored, &dec_secrets(), 7).unwrap();
    assert_eq!(plain, std::fs::read(format!("{FIXTURES}/golden.txt")).unwrap());
}

#[test]
fn age_round_trips_random_data_at_random_chunk_boundaries() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for size in [0usize, 1, 65535, 65536, 65537, 3 * 65536, 200_000, 1_000_003] {
        let data: Vec<u8> = (0..size).map(|_| rng.random()).collect();
        let enc_chunk = rng.random_range(1..100_000);
        let stored = age_run(true, &data, &enc_secrets(), enc_chunk).unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1\n"));
        if size > 0 {
            assert_ne!(
                &stored[stored.len() - size.min(64)..],
                &data[size - size.min(64)..],
                "stored bytes are not the plain bytes"
            );
        }
        let dec_chunk = rng.random_range(1..100_000);
        let plain = age_run(false, &stored, &dec_secrets(), dec_chunk).unwrap();
        assert_eq!(plain.len(), size);
        assert!(plain == data, "round trip of {size} bytes (chunks {enc_chunk}/{dec_chunk})");
    }
}

#[test]
fn age_output_is_readable_by_the_age_cli() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let stored = age_run(true, &data, &enc_secrets(), 10_000).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("obj.age");
    std::fs::File::create(&f).unwrap().write_all(&stored).unwrap();
    let out = Command::new("age")
        .args(["-d", "-i", &format!("{FIXTURES}/golden.key")])
        .arg(&f)
        .output()
        .expect("the age CLI must be installed (.ci/run installs Debian's age)");
    assert!(out.status.success(), "age -d: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout == data);
}

#[test]
fn age_detects_tampering_truncation_and_wrong_keys() {
    let data = vec![42u8; 150_000];
    let stored = age_run(true, &data, &enc_secrets(), 4096).unwrap();
    let header_end = stored.windows(4).position(|w| w == b"\n---").unwrap();
    for at in [10, header_end + 10, header_end + 80, stored.len() / 2, stored.len() - 3] {
        let mut bad = stored.clone();
        bad[at] ^= 0x01;
        assert!(age_run(false, &bad, &dec_secrets(), 8192).is_err(), "a flipped byte at {at} is detected");
    }
    for cut in [20, header_end + 40, 70_000, stored.len() - 1] {
        assert!(age_run(false, &stored[..cut], &dec_secrets(), 8192).is_err(), "truncation at {cut} is detected");
    }
    // Dropping a whole middle chunk is detected too.
    let mut spliced = stored[..header_end + 100].to_vec();
    spliced.extend_from_slice(&stored[header_end + 100 + 65552..]);
    assert!(age_run(false, &spliced, &dec_secrets(), 8192).is_err());
    let other = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ9UFSLP";
    let e = age_run(false, &stored, &[("identity".into(), other.into())], 8192).unwrap_err().to_string();
    assert!(e.contains("identit"), "{e}");
    let e = age_run(false, &stored, &[], 8192).unwrap_err().to_string();
    assert!(e.contains("no age identity"), "{e}");
    let e = age_run(true, &data, &[], 8192).unwrap_err().to_string();
    assert!(e.contains("no age recipient"), "{e}");
}

// ---------------------------------------------------------------- path template

fn files_set(n: u64, seed: u64) -> Vec<PluginFile> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut txid = 1;
    for _ in 0..n {
        let level: u8 = [0, 0, 0, 1, 2, 3, 9][rng.random_range(0..7)];
        let span = rng.random_range(1..50);
        let min = if level == 9 { 1 } else { txid };
        out.push(PluginFile {
            level,
            min_txid: min,
            max_txid: txid + span,
            size: 0,
            created_ms: 1_700_000_000_000 + rng.random_range(0..400 * 86_400_000i64),
        });
        txid += span + 1;
    }
    out
}

#[test]
fn template_keys_parse_back_without_collisions() {
    let p = builtin("path-template");
    for template in [
        "{level}/{min}-{max}.ltx",
        "{hash}/{db}/{level}/{yyyy}/{mm}/{dd}/{min}-{max}.ltx",
        "backups/{db}-{level}-{hh}h-{min}_{max}",
    ] {
        let cfg = settings(&[("template", template), ("hash-length", "2")]);
        p.validate(&cfg).unwrap();
        let files = files_set(3000, template.len() as u64);
        let keys = p.keys(&cfg, "app.db", &files).unwrap(); // the host checks parse(key(f)) == f
        let unique: HashSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "no two files share a key ({template})");
        // Every key lies under one of its level's prefixes, so listing finds it.
        for (f, k) in files.iter().zip(&keys) {
            let prefixes = p.list_plan(&cfg, "app.db", f.level).unwrap();
            assert!(prefixes.iter().any(|pre| k.starts_with(pre.as_str())), "{k} under {prefixes:?}");
        }
        // Keys of other databases or junk do not parse as files.
        let parsed = p.parse_keys(&cfg, "other.db", 0, &keys[..50]).unwrap();
        if template.contains("{db}") {
            assert!(parsed.iter().all(|x| x.is_none()));
        }
    }
}

#[test]
fn template_golden_vectors() {
    let p = builtin("path-template");
    let cfg =
        settings(&[("template", "{hash}/{db}/{level}/{yyyy}-{mm}-{dd}T{hh}/{min}-{max}.ltx"), ("hash-length", "2")]);
    let f = PluginFile {
        level: 1,
        min_txid: 0x2a,
        max_txid: 0x30,
        size: 0,
        created_ms: Utc.with_ymd_and_hms(2026, 11, 24, 21, 5, 0).unwrap().timestamp_millis(),
    };
    let key = &p.keys(&cfg, "app.db", &[f]).unwrap()[0];
    assert!(key.ends_with("/app.db/0001/2026-11-24T21/000000000000002a-0000000000000030.ltx"), "golden key: {key}");
    assert_eq!(key.len(), "xx/app.db/0001/2026-11-24T21/000000000000002a-0000000000000030.ltx".len());
    assert_eq!(p.list_plan(&cfg, "app.db", 1).unwrap().len(), 256, "a 2-hex-digit hash spreads keys over 256 prefixes");
    assert!(p.validate(&settings(&[("template", "{min}.ltx")])).unwrap_err().to_string().contains("{level}"));
    assert!(p.validate(&settings(&[("template", "../{level}/{min}-{max}")])).is_err());
}

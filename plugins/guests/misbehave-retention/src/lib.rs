//! A retention plugin that misbehaves on purpose, for the host's containment tests.
//! Setting `mode`: `loop` (never returns), `grow` (allocates without end), `panic`,
//! `huge` (an enormous answer), `newest` (asks to delete the newest snapshot),
//! `unknown` (asks to delete a file that does not exist), `err`, or `ok` (deletes nothing).

wit_bindgen::generate!({ world: "retention-plugin", path: "../../../wit" });

use exports::sluice::policy::retention::Guest;
use sluice::policy::types::FileInfo;

struct Misbehave;

fn mode(settings: &[(String, String)]) -> String {
    settings.iter().find(|(k, _)| k == "mode").map(|(_, v)| v.clone()).unwrap_or_else(|| "ok".into())
}

impl Guest for Misbehave {
    fn validate(settings: Vec<(String, String)>) -> Result<(), String> {
        match mode(&settings).as_str() {
            "bad-config" => Err("mode bad-config is rejected on purpose".into()),
            _ => Ok(()),
        }
    }

    fn select_deletions(settings: Vec<(String, String)>, files: Vec<FileInfo>, _now_ms: i64) -> Result<Vec<FileInfo>, String> {
        match mode(&settings).as_str() {
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("misbehave-retention panics on purpose"),
            "huge" => Ok(vec![FileInfo { level: 0, min_txid: 1, max_txid: 1, size: 0, created_ms: 0 }; 8_000_000]),
            "newest" => Ok(files.iter().filter(|f| f.level == 9).max_by_key(|f| f.max_txid).into_iter().copied().collect()),
            "unknown" => Ok(vec![FileInfo { level: 3, min_txid: 77, max_txid: 99, size: 1, created_ms: 0 }]),
            "err" => Err("misbehave-retention fails on purpose".into()),
            _ => Ok(Vec::new()),
        }
    }
}

export!(Misbehave);

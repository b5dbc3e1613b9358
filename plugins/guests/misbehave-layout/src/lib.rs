//! A layout plugin that misbehaves on purpose. Setting `mode`: `escape` (keys that
//! leave the replica's path), `collide` (one key for every file), `lie` (parse gives
//! another file), `loop`, or `ok` (`<level>/<min>-<max>`).

wit_bindgen::generate!({ world: "layout-plugin", path: "../../../wit" });

use exports::sluice::policy::layout::Guest;
use sluice::policy::types::FileId;

struct Misbehave;

fn mode(settings: &[(String, String)]) -> String {
    settings.iter().find(|(k, _)| k == "mode").map(|(_, v)| v.clone()).unwrap_or_else(|| "ok".into())
}

impl Guest for Misbehave {
    fn validate(_settings: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn key(settings: Vec<(String, String)>, _db: String, f: FileId, _created_ms: i64) -> Result<String, String> {
        match mode(&settings).as_str() {
            "escape" => Ok(format!("../../elsewhere/{}-{}", f.min_txid, f.max_txid)),
            "collide" => Ok("always-the-same".into()),
            "loop" => loop {
                std::hint::black_box(0);
            },
            _ => Ok(format!("{}/{:016x}-{:016x}", f.level, f.min_txid, f.max_txid)),
        }
    }

    fn parse(settings: Vec<(String, String)>, _db: String, key: String) -> Result<Option<FileId>, String> {
        let mut parts = key.split('/');
        let (Some(level), Some(name)) = (parts.next(), parts.next()) else { return Ok(None) };
        let Some((a, b)) = name.split_once('-') else { return Ok(None) };
        let (Ok(level), Ok(min), Ok(max)) = (level.parse(), u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            return Ok(None);
        };
        let f = FileId { level, min_txid: min, max_txid: max };
        Ok(Some(if mode(&settings) == "lie" { FileId { max_txid: max + 1, ..f } } else { f }))
    }

    fn prefixes(_settings: Vec<(String, String)>, _db: String, level: u8) -> Result<Vec<String>, String> {
        Ok(vec![format!("{level}/")])
    }
}

export!(Misbehave);

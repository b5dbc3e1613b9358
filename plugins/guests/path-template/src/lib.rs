//! Object keys from a template, and back.
//!
//! Setting `template` (default `{level}/{min}-{max}.ltx`) with placeholders:
//! `{db}` database file name, `{level}` level as 4 hex digits (Litestream's S3 form),
//! `{min}` / `{max}` TXIDs as 16 hex digits, `{yyyy}` `{mm}` `{dd}` `{hh}` the file's
//! UTC date and hour, and `{hash}` a short hex hash of (db, level, min) that spreads
//! keys across prefixes. `hash-length` (1 or 2, default 2) sets its width.
//! Every placeholder except `{db}` has a fixed width, so a key parses back
//! unambiguously; `{level}`, `{min}` and `{max}` are required.

wit_bindgen::generate!({ world: "layout-plugin", path: "../../../wit" });

use exports::sluice::policy::layout::Guest;
use sluice::policy::types::FileId;

struct Template;

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Lit(String),
    Db,
    Level,
    Min,
    Max,
    Year,
    Month,
    Day,
    Hour,
    Hash,
}

struct Spec {
    segs: Vec<Seg>,
    hash_len: usize,
}

fn spec(settings: &[(String, String)]) -> Result<Spec, String> {
    let mut template = "{level}/{min}-{max}.ltx".to_string();
    let mut hash_len = 2;
    for (k, v) in settings {
        match k.as_str() {
            "template" => template = v.clone(),
            "hash-length" => {
                hash_len = match v.as_str() {
                    "1" => 1,
                    "2" => 2,
                    _ => return Err(format!("hash-length must be 1 or 2, got {v:?}")),
                }
            }
            other => return Err(format!("unknown setting {other:?}: use template or hash-length")),
        }
    }
    let mut segs = Vec::new();
    let mut rest = template.as_str();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').ok_or_else(|| format!("unclosed placeholder in template {template:?}"))?;
            segs.push(match &after[..end] {
                "db" => Seg::Db,
                "level" => Seg::Level,
                "min" => Seg::Min,
                "max" => Seg::Max,
                "yyyy" => Seg::Year,
                "mm" => Seg::Month,
                "dd" => Seg::Day,
                "hh" => Seg::Hour,
                "hash" => Seg::Hash,
                other => return Err(format!("unknown placeholder {{{other}}} in template {template:?}")),
            });
            rest = &after[end + 1..];
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            segs.push(Seg::Lit(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    for need in [Seg::Level, Seg::Min, Seg::Max] {
        if !segs.contains(&need) {
            return Err(format!("template {template:?} must contain {{level}}, {{min}} and {{max}}"));
        }
    }
    if template.starts_with('/') || template.split('/').any(|p| p == ".." || p == ".") {
        return Err(format!("template {template:?} must be relative, without . or .. segments"));
    }
    Ok(Spec { segs, hash_len })
}

fn fnv1a(data: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn hash(db: &str, level: u8, min: u64, len: usize) -> String {
    let h = format!("{:08x}", fnv1a(&format!("{db}/{level}/{min:016x}")));
    h[..len].to_string()
}

/// (year, month, day, hour) in UTC from milliseconds since the epoch.
fn civil(ms: i64) -> (i64, i64, i64, i64) {
    let days = ms.div_euclid(86_400_000);
    let hour = ms.rem_euclid(86_400_000) / 3_600_000;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d, hour)
}

fn width(seg: &Seg, hash_len: usize) -> usize {
    match seg {
        Seg::Level => 4,
        Seg::Min | Seg::Max => 16,
        Seg::Year => 4,
        Seg::Month | Seg::Day | Seg::Hour => 2,
        Seg::Hash => hash_len,
        Seg::Lit(_) | Seg::Db => 0,
    }
}

impl Guest for Template {
    fn validate(settings: Vec<(String, String)>) -> Result<(), String> {
        spec(&settings).map(|_| ())
    }

    fn key(settings: Vec<(String, String)>, db: String, f: FileId, created_ms: i64) -> Result<String, String> {
        let s = spec(&settings)?;
        let (y, mo, d, h) = civil(created_ms);
        let mut out = String::new();
        for seg in &s.segs {
            match seg {
                Seg::Lit(l) => out.push_str(l),
                Seg::Db => out.push_str(&db),
                Seg::Level => out.push_str(&format!("{:04x}", f.level)),
                Seg::Min => out.push_str(&format!("{:016x}", f.min_txid)),
                Seg::Max => out.push_str(&format!("{:016x}", f.max_txid)),
                Seg::Year => out.push_str(&format!("{y:04}")),
                Seg::Month => out.push_str(&format!("{mo:02}")),
                Seg::Day => out.push_str(&format!("{d:02}")),
                Seg::Hour => out.push_str(&format!("{h:02}")),
                Seg::Hash => out.push_str(&hash(&db, f.level, f.min_txid, s.hash_len)),
            }
        }
        Ok(out)
    }

    fn parse(settings: Vec<(String, String)>, db: String, key: String) -> Result<Option<FileId>, String> {
        let s = spec(&settings)?;
        let mut rest = key.as_str();
        let (mut level, mut min, mut max, mut hash_seen) = (None, None, None, None);
        for seg in &s.segs {
            match seg {
                Seg::Lit(l) => match rest.strip_prefix(l.as_str()) {
                    Some(r) => rest = r,
                    None => return Ok(None),
                },
                Seg::Db => match rest.strip_prefix(db.as_str()) {
                    Some(r) => rest = r,
                    None => return Ok(None),
                },
                other => {
                    let w = width(other, s.hash_len);
                    if rest.len() < w || !rest.is_char_boundary(w) {
                        return Ok(None);
                    }
                    let (field, r) = rest.split_at(w);
                    rest = r;
                    let hex = field.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
                    let dec = field.bytes().all(|c| c.is_ascii_digit());
                    match other {
                        Seg::Level if hex => level = u8::from_str_radix(field, 16).ok(),
                        Seg::Min if hex => min = u64::from_str_radix(field, 16).ok(),
                        Seg::Max if hex => max = u64::from_str_radix(field, 16).ok(),
                        Seg::Hash if hex => hash_seen = Some(field.to_string()),
                        Seg::Year | Seg::Month | Seg::Day | Seg::Hour if dec => {}
                        _ => return Ok(None),
                    }
                }
            }
        }
        if !rest.is_empty() {
            return Ok(None);
        }
        let (Some(level), Some(min), Some(max)) = (level, min, max) else { return Ok(None) };
        if hash_seen.is_some_and(|h| h != hash(&db, level, min, s.hash_len)) {
            return Ok(None);
        }
        Ok(Some(FileId { level, min_txid: min, max_txid: max }))
    }

    fn prefixes(settings: Vec<(String, String)>, db: String, level: u8) -> Result<Vec<String>, String> {
        let s = spec(&settings)?;
        let mut prefixes = vec![String::new()];
        for seg in &s.segs {
            match seg {
                Seg::Lit(l) => prefixes.iter_mut().for_each(|p| p.push_str(l)),
                Seg::Db => prefixes.iter_mut().for_each(|p| p.push_str(&db)),
                Seg::Level => prefixes.iter_mut().for_each(|p| p.push_str(&format!("{level:04x}"))),
                Seg::Hash => {
                    let n = 16usize.pow(s.hash_len as u32);
                    prefixes = prefixes
                        .iter()
                        .flat_map(|p| (0..n).map(move |i| format!("{p}{i:0w$x}", w = s.hash_len)))
                        .collect();
                }
                _ => break,
            }
        }
        Ok(prefixes)
    }
}

export!(Template);

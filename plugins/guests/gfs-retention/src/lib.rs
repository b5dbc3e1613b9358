//! Grandfather-father-son retention for Sluice replicas.
//!
//! Settings (all optional): `hourly`, `daily`, `weekly`, `monthly` (how many of the
//! most recent periods keep their newest snapshot; default 24, 7, 4, 12) and
//! `keep-within` (keep every file younger than this, e.g. `2h`; default `1h`).
//! Snapshots (level 9) that no rule keeps are deleted; files of levels 0..8 are
//! deleted once they are older than `keep-within` and covered by the newest kept
//! snapshot. The newest snapshot, and the newest file of every level, are always
//! kept (the host enforces the rest of the restorable chain).

wit_bindgen::generate!({ world: "retention-plugin", path: "../../../wit" });

use exports::sluice::policy::retention::Guest;
use sluice::policy::types::FileInfo;

struct Gfs;

struct Rules {
    hourly: usize,
    daily: usize,
    weekly: usize,
    monthly: usize,
    keep_within_ms: i64,
}

fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let err = || format!("invalid duration {s:?}: use e.g. 90m, 2h, 7d");
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?);
    let n: i64 = num.parse().map_err(|_| err())?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    Ok(n * mult)
}

fn rules(settings: &[(String, String)]) -> Result<Rules, String> {
    let mut r = Rules { hourly: 24, daily: 7, weekly: 4, monthly: 12, keep_within_ms: 3_600_000 };
    for (k, v) in settings {
        let count = || v.parse::<usize>().map_err(|_| format!("{k} must be a whole number, got {v:?}"));
        match k.as_str() {
            "hourly" => r.hourly = count()?,
            "daily" => r.daily = count()?,
            "weekly" => r.weekly = count()?,
            "monthly" => r.monthly = count()?,
            "keep-within" => r.keep_within_ms = parse_duration_ms(v)?,
            other => return Err(format!("unknown setting {other:?}: use hourly, daily, weekly, monthly, keep-within")),
        }
    }
    Ok(r)
}

/// Days since 1970-01-01 → (year, month) in the proleptic Gregorian calendar.
fn year_month(days: i64) -> (i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// The period a time falls in, for each rule.
fn hour(ms: i64) -> i64 {
    ms.div_euclid(3_600_000)
}
fn day(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}
/// ISO weeks start on Monday; 1970-01-01 was a Thursday.
fn week(ms: i64) -> i64 {
    (day(ms) + 3).div_euclid(7)
}
fn month(ms: i64) -> i64 {
    let (y, m) = year_month(day(ms));
    y * 12 + m
}

/// Keeps the newest snapshot of each of the `n` most recent periods that have one.
fn keep_newest_per_period(snaps: &[&FileInfo], n: usize, period: fn(i64) -> i64, keep: &mut Vec<bool>) {
    let mut seen: Vec<i64> = Vec::new();
    // Newest first: the first snapshot met in a period is that period's newest.
    for (i, s) in snaps.iter().enumerate().rev() {
        let p = period(s.created_ms);
        if seen.last() == Some(&p) {
            continue;
        }
        if seen.len() == n {
            break;
        }
        seen.push(p);
        keep[i] = true;
    }
}

impl Guest for Gfs {
    fn validate(settings: Vec<(String, String)>) -> Result<(), String> {
        rules(&settings).map(|_| ())
    }

    fn select_deletions(settings: Vec<(String, String)>, files: Vec<FileInfo>, now_ms: i64) -> Result<Vec<FileInfo>, String> {
        let r = rules(&settings)?;
        let recent = |f: &FileInfo| f.created_ms >= now_ms - r.keep_within_ms;
        let mut snaps: Vec<&FileInfo> = files.iter().filter(|f| f.level == 9).collect();
        snaps.sort_by_key(|s| (s.created_ms, s.max_txid));
        let mut keep = vec![false; snaps.len()];
        if let Some(last) = keep.last_mut() {
            *last = true;
        }
        for (i, s) in snaps.iter().enumerate() {
            if recent(s) {
                keep[i] = true;
            }
        }
        keep_newest_per_period(&snaps, r.hourly, hour, &mut keep);
        keep_newest_per_period(&snaps, r.daily, day, &mut keep);
        keep_newest_per_period(&snaps, r.weekly, week, &mut keep);
        keep_newest_per_period(&snaps, r.monthly, month, &mut keep);
        let mut out: Vec<FileInfo> = snaps.iter().zip(&keep).filter(|(_, k)| !**k).map(|(s, _)| **s).collect();

        // Lower levels: once old and covered by the newest kept snapshot, they are
        // not needed by any kept restore point (each snapshot is complete).
        let covered = snaps.iter().zip(&keep).filter(|(_, k)| **k).map(|(s, _)| s.max_txid).max().unwrap_or(0);
        for level in 0..9u8 {
            let in_level: Vec<&FileInfo> = files.iter().filter(|f| f.level == level).collect();
            let Some(newest) = in_level.iter().map(|f| f.max_txid).max() else { continue };
            for f in in_level {
                if f.max_txid < newest && f.max_txid <= covered && !recent(f) {
                    out.push(*f);
                }
            }
        }
        Ok(out)
    }
}

export!(Gfs);

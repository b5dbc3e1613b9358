//! Honesty about keys: every key of a config file that Sluice does not know gets a
//! warning naming it and, when one is close, the key that was probably meant
//! (`sync-intervall` → `sync-interval`). Start-up goes on, as Litestream's does.
//! keys Litestream accepts but Sluice has no use for are known, not warned about.

use serde_yaml::Value;

/// Settings a replica takes, which the top level also takes as defaults.
const REPLICA_SETTINGS: &[&str] = &[
    "sync-interval",
    "access-key-id",
    "secret-access-key",
    "region",
    "bucket",
    "endpoint",
    "force-path-style",
    "skip-verify",
    "sign-payload",
    "require-content-md5",
    "storage-class",
    "part-size",
    "concurrency",
    "sse-customer-algorithm",
    "sse-customer-key",
    "sse-customer-key-path",
    "sse-kms-key-id",
    "account-name",
    "account-key",
    "sas-token",
    "host",
    "user",
    "password",
    "key-path",
    "host-key",
    "concurrent-writes",
    "insecure-ignore-host-key",
    "webdav-url",
    "webdav-username",
    "webdav-password",
    "jwt",
    "seed",
    "creds",
    "nkey",
    "username",
    "token",
    "tls",
    "root-cas",
    "client-cert",
    "client-key",
    "max-reconnects",
    "reconnect-wait",
    "timeout",
    "retention-plugin",
    "transform-plugin",
    "layout-plugin",
    "age",
    "backlog-limit",
    "max-sync-ltx-files",
    "sign-accept-encoding",
    // Litestream 0.3's per-replica keys, which 0.5 accepts and ignores.
    "retention",
    "retention-check-interval",
    "snapshot-interval",
    "validation-interval",
];

const TOP: &[&str] = &[
    "dbs",
    "logging",
    "addr",
    "mcp-addr",
    "mcp-token",
    "exec",
    "socket",
    "heartbeat-url",
    "heartbeat-interval",
    "shutdown-sync-timeout",
    "shutdown-sync-interval",
    "lease-ttl",
    "levels",
    "snapshot",
    "l0-retention",
    "l0-retention-check-interval",
    "retention",
    "validation",
    "verify-compaction",
    "plugins",
];

const DB: &[&str] = &[
    "path",
    "dir",
    "pattern",
    "recursive",
    "watch",
    "meta-path",
    "meta-dir",
    "monitor-interval",
    "checkpoint-interval",
    "busy-timeout",
    "min-checkpoint-page-count",
    "max-checkpoint-page-count",
    "truncate-page-n",
    "max-sync-wal-bytes",
    "replica",
    "replicas",
    "snapshot",
    "restore-if-db-not-exists",
    "verify",
];
const DRILL: &[&str] = &["interval", "sql"];

const REPLICA: &[&str] = &["type", "url", "path", "name"];

/// Litestream keys whose behaviour Sluice always has: `auto-recover` (a missing or
/// corrupt local LTX file always resets local state and writes a snapshot).
const ALWAYS: &[&str] = &["auto-recover"];
const LOGGING: &[&str] = &["level", "type", "stderr", "source"];
const SOCKET: &[&str] = &["enabled", "path", "permissions"];
const INTERVAL: &[&str] = &["interval"];
const SNAPSHOT: &[&str] = &["interval", "retention"];
const RETENTION: &[&str] = &["enabled"];
const PLUGIN: &[&str] = &["name", "builtin", "path", "sha256", "config", "secrets", "limits"];
const LIMITS: &[&str] = &["memory", "timeout", "output"];
const SECRET: &[&str] = &["file", "env"];

/// One warning per unknown key in the parsed config file.
pub fn unknown(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let top: Vec<&str> = TOP.iter().chain(REPLICA_SETTINGS).copied().collect();
    check(doc, "", &top, &mut out);
    let Value::Mapping(m) = doc else { return out };
    let section = |k: &str| m.get(Value::String(k.into()));
    if let Some(v) = section("logging") {
        check(v, "logging", LOGGING, &mut out);
    }
    if let Some(v) = section("socket") {
        check(v, "socket", SOCKET, &mut out);
    }
    if let Some(v) = section("snapshot") {
        check(v, "snapshot", SNAPSHOT, &mut out);
    }
    if let Some(v) = section("validation") {
        check(v, "validation", INTERVAL, &mut out);
    }
    if let Some(v) = section("retention").filter(|v| v.is_mapping()) {
        check(v, "retention", RETENTION, &mut out);
    }
    for (i, level) in seq(section("levels")).enumerate() {
        check(level, &format!("levels[{i}]"), INTERVAL, &mut out);
    }
    for (i, p) in seq(section("plugins")).enumerate() {
        let at = format!("plugins[{i}]");
        check(p, &at, PLUGIN, &mut out);
        if let Some(l) = get(p, "limits") {
            check(l, &format!("{at}.limits"), LIMITS, &mut out);
        }
        if let Some(Value::Mapping(secrets)) = get(p, "secrets") {
            for (k, s) in secrets {
                let name = k.as_str().unwrap_or("?");
                check(s, &format!("{at}.secrets.{name}"), SECRET, &mut out);
            }
        }
    }
    let replica: Vec<&str> = REPLICA.iter().chain(REPLICA_SETTINGS).copied().collect();
    for (i, db) in seq(section("dbs")).enumerate() {
        let at = format!("dbs[{i}]");
        check(db, &at, DB, &mut out);
        if let Some(r) = get(db, "replica") {
            check(r, &format!("{at}.replica"), &replica, &mut out);
        }
        for (j, r) in seq(get(db, "replicas")).enumerate() {
            check(r, &format!("{at}.replicas[{j}]"), &replica, &mut out);
        }
        if let Some(s) = get(db, "snapshot") {
            check(s, &format!("{at}.snapshot"), SNAPSHOT, &mut out);
        }
        if let Some(v) = get(db, "verify") {
            check(v, &format!("{at}.verify"), DRILL, &mut out);
        }
    }
    out
}

fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_mapping().and_then(|m| m.get(Value::String(key.into())))
}

fn seq(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_sequence).into_iter().flatten()
}

fn check(v: &Value, at: &str, known: &[&str], out: &mut Vec<String>) {
    let Value::Mapping(m) = v else { return };
    for k in m.keys() {
        let Some(key) = k.as_str() else { continue };
        if known.contains(&key) || ALWAYS.contains(&key) {
            continue;
        }
        let full = if at.is_empty() { key.to_string() } else { format!("{at}.{key}") };
        let hint = match closest(key, known) {
            Some(s) => format!("; did you mean `{s}`?"),
            None => "; it is ignored".to_string(),
        };
        out.push(format!("unknown config key `{full}`{hint}"));
    }
}

/// The known key nearest to `key`, if it is near enough to be a typo.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase().replace('_', "-");
    known.iter().map(|k| (distance(&key, k), *k)).filter(|(d, k)| *d <= 2.max(k.len() / 4)).min().map(|(_, k)| k)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(yaml: &str) -> Vec<String> {
        unknown(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn typos_get_the_key_that_was_meant() {
        let w = warnings(
            "dbs:\n  - path: /a.db\n    monitor-intervall: 1s\n    replica:\n      url: s3://b/a\n      sync-intervall: 1s\n",
        );
        assert_eq!(
            w,
            [
                "unknown config key `dbs[0].monitor-intervall`; did you mean `monitor-interval`?",
                "unknown config key `dbs[0].replica.sync-intervall`; did you mean `sync-interval`?",
            ]
        );
        let w = warnings("acces-key-id: x\nsnapshot:\n  intreval: 1h\nfoo: 1\n");
        assert_eq!(
            w,
            [
                "unknown config key `acces-key-id`; did you mean `access-key-id`?",
                "unknown config key `foo`; it is ignored",
                "unknown config key `snapshot.intreval`; did you mean `interval`?",
            ]
        );
    }

    #[test]
    fn litestream_0_5_keys_are_known() {
        let w = warnings(
            "logging:\n  source: true\ndbs:\n  - dir: /d\n    meta-dir: /m\n    replica:\n      url: s3://b/a\n      auto-recover: true\n      max-sync-ltx-files: 10\n      sign-accept-encoding: false\n",
        );
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn every_known_key_passes() {
        let yaml = "addr: :9090\nlogging:\n  level: debug\nsocket:\n  enabled: true\nlevels:\n  - interval: 30s\n\
                    plugins:\n  - name: k\n    builtin: gfs-retention\n    limits:\n      memory: 1MiB\n\
                    dbs:\n  - path: /a.db\n    replicas:\n      - name: one\n        type: s3\n        bucket: b\n        retention: 24h\n";
        assert_eq!(warnings(yaml), Vec::<String>::new());
    }
}

//! Control-socket requests: the query string (`/txid?path=`) and JSON bodies.
#![no_main]
use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = std::str::from_utf8(data) {
        let _ = sluice::daemon::server::query_value(q, "path");
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = (v["path"].as_str(), v["url"].as_str(), v["wait"].as_bool(), v["timeout"].as_u64());
    }
});

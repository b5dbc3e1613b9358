//! The config file: YAML with `$VAR` / `${VAR}` expansion, the unknown-key check,
//! and every value the daemon derives from it before it touches a database.
#![no_main]
use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = sluice::config::expand_env(text);
    for expand in [false, true] {
        let Ok(cfg) = sluice::config::Config::parse(text, expand) else { continue };
        let _ = cfg.warnings();
        let _ = cfg.heartbeat();
        let _ = cfg.shutdown_sync();
        let _ = cfg.socket.config();
        let _ = cfg.store_options();
    }
});

//! The host's checks of what a layout plugin answers: a key or a listing prefix
//! that would leave the replica's path is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if sluice::plugin::check_key("fuzz", s).is_ok() {
        assert!(!s.is_empty() && !s.starts_with('/') && !s.split('/').any(|p| p == ".." || p == "."));
    }
    if sluice::plugin::check_prefix("fuzz", s).is_ok() {
        assert!(!s.starts_with('/') && !s.split('/').any(|p| p == ".."));
    }
});

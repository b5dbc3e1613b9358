//! Durations (`1h30m`, `500ms`) and byte sizes (`5MiB`) from the config and the
//! command line: any input is an error or a value within the bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = sluice::config::parse_duration(s) {
        assert!(d <= sluice::config::MAX_DURATION);
    }
    if let Ok(n) = sluice::config::parse_byte_size(s) {
        assert!(n <= sluice::config::MAX_BYTE_SIZE);
    }
});

//! The LTX decoder: header, page frames (LZ4 blocks and the legacy form), page
//! index and trailer, as read from a replica or a local file. Any input is an
//! error or a verified file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();

fuzz_target!(|data: &[u8]| {
    let _ = sluice::ltx::read_header(data, "fuzz");
    if let Ok(dec) = sluice::ltx::Decoder::new(data, "fuzz") {
        let _ = dec.verify_with_trailer();
    }
});

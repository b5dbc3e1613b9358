//! The Litestream 0.3 reader: object keys under `generations/`, and the LZ4 frames
//! of snapshots and WAL segments.
#![no_main]
use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = std::str::from_utf8(data) {
        let _ = sluice::restore::v3::parse_key(key);
    }
    // Bounded output: a frame that claims gigabytes is cut off, not followed.
    let mut out = Bounded(0);
    let _ = sluice::restore::v3::decode_object(data, &mut out);
});

struct Bounded(usize);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 > 64 << 20 {
            return Err(std::io::Error::other("more than 64 MiB"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

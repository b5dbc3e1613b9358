//! The WAL reader: the 32-byte header, then frames (headers, checksums, commit
//! markers) read from the file as an application left it.
#![no_main]
use std::io::Write;

use libfuzzer_sys::fuzz_target;

sluice_fuzz::bounded_allocations!();
use sluice::capture::wal::{FrameReader, WalHeader};

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.first_chunk::<32>() else { return };
    let Ok(Some(hdr)) = WalHeader::parse(head) else { return };
    let mut file = tempfile();
    file.write_all(data).unwrap();
    let mut frames = FrameReader::from_start(&file, hdr).keeping(1 << 20);
    for _ in 0..10_000 {
        match frames.next_frame() {
            Ok(Some((offset, _))) => {
                let _ = frames.page_at(offset);
            }
            _ => break,
        }
    }
    let _ = FrameReader::resume_at(&file, hdr, data.len() as u64 / 2);
});

/// An anonymous file in memory.
fn tempfile() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("sluice-fuzz-wal-{}", std::process::id()));
    let f = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    f
}

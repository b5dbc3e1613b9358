//! CRC-64 with the ISO polynomial, bit-compatible with Go's `hash/crc64` using
//! `crc64.MakeTable(crc64.ISO)`: reflected polynomial 0xD800000000000000, initial
//! value and final xor all ones. LTX file checksums are computed with it.

/// A running CRC-64/GO-ISO digest. The arithmetic is `crc-fast`'s, which folds with
/// the CPU's carry-less multiply (PCLMULQDQ, PMULL) where it has one: every page
/// Sluice captures or restores is checksummed, so this is on the hot path.
#[derive(Clone, Copy, Debug)]
pub struct Crc64 {
    digest: crc_fast::Digest,
}

impl Default for Crc64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc64 {
    pub fn new() -> Self {
        Crc64 { digest: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64GoIso) }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    pub fn finish(&self) -> u64 {
        self.digest.finalize()
    }
}

/// The checksum of `a ++ b` from the checksum of `a`, the checksum of `b`, and the
/// length of `b`: lets a writer checksum a header it only fills in at the end.
pub fn combine(sum_a: u64, sum_b: u64, len_b: u64) -> u64 {
    crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc64GoIso, sum_a, sum_b, len_b)
}

/// One-shot checksum of `data`.
pub fn checksum(data: &[u8]) -> u64 {
    let mut c = Crc64::new();
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value_matches_go_iso() {
        assert_eq!(checksum(b"123456789"), 0xB909_56C7_75A4_1001);
    }

    #[test]
    fn combine_equals_checksum_of_concatenation() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 + 11) as u8).collect();
        for cut in [0, 1, 100, 4096, 4999, 5000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(combine(checksum(a), checksum(b), b.len() as u64), checksum(&data), "cut at {cut}");
        }
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut c = Crc64::new();
        for chunk in data.chunks(13) {
            c.update(chunk);
        }
        assert_eq!(c.finish(), checksum(&data));
    }

    /// Bit by bit, straight from the definition: the reference the fast path must equal
    /// at every length (short tails, SIMD blocks and the seams between them).
    fn bitwise(data: &[u8]) -> u64 {
        let mut crc = !0u64;
        for &b in data {
            crc ^= b as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xD800_0000_0000_0000 } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn equals_the_definition_at_every_length_and_split() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        for len in (0..300).chain([511, 512, 513, 4096, 4100, 5000]) {
            let want = bitwise(&data[..len]);
            assert_eq!(checksum(&data[..len]), want, "length {len}");
            let mut c = Crc64::new();
            let (a, b) = data[..len].split_at(len / 3);
            c.update(a);
            c.update(b);
            assert_eq!(c.finish(), want, "length {len} in two parts");
        }
    }
}

//! Fixed-width bit packing, least significant bit first.
//!
//! Value `j` of width `b` occupies stream bits `j·b … j·b + b − 1`, its least significant bit
//! first; stream bit `n` is bit `n mod 8` (value `1 << (n mod 8)`) of byte `⌊n / 8⌋`. The last
//! byte's unused high bits are zero. With `b = 3`, values `a`, `b`, `c` fill byte 0 as
//! `c₁c₀ b₂b₁b₀ a₂a₁a₀` (bit 7 … bit 0) and byte 1 starts with `c₂`.

use crate::error::{Error, Result};

/// Bytes needed for `count` values of `bits` bits, or `None` on overflow.
pub(crate) fn packed_len(count: usize, bits: u32) -> Option<usize> {
    count
        .checked_mul(bits as usize)
        .map(|total| total.div_ceil(8))
}

/// Packs the low `bits` bits (1 ≤ bits ≤ 32) of every value.
pub(crate) fn pack(values: impl ExactSizeIterator<Item = u32>, bits: u32) -> Vec<u8> {
    debug_assert!((1..=32).contains(&bits));
    let mut out = vec![0u8; packed_len(values.len(), bits).expect("packed length fits usize")];
    let mask = low_mask(bits);
    let mut pos = 0usize;
    for v in values {
        let mut v = u64::from(v) & mask;
        let mut bit = pos;
        let mut left = bits;
        while left > 0 {
            let shift = (bit % 8) as u32;
            let take = (8 - shift).min(left);
            out[bit / 8] |= ((v & low_mask(take)) as u8) << shift;
            v >>= take;
            bit += take as usize;
            left -= take;
        }
        pos += bits as usize;
    }
    out
}

/// Unpacks `count` values of `bits` bits (1 ≤ bits ≤ 32) from exactly
/// [`packed_len`]`(count, bits)` bytes whose padding bits are zero.
///
/// # Errors
/// [`Error::InvalidModelFile`] naming `what` for a wrong byte length or non-zero padding.
pub(crate) fn unpack(bytes: &[u8], bits: u32, count: usize, what: &str) -> Result<Vec<u32>> {
    let expected = packed_len(count, bits).ok_or_else(|| Error::InvalidModelFile {
        what: format!("{what}: {count} values of {bits} bits overflow"),
    })?;
    if bytes.len() != expected {
        return Err(Error::InvalidModelFile {
            what: format!(
                "{what}: {} bytes, expected {expected} for {count} values of {bits} bits",
                bytes.len()
            ),
        });
    }
    let used = count * bits as usize;
    if !used.is_multiple_of(8) && bytes[used / 8] >> (used % 8) != 0 {
        return Err(Error::InvalidModelFile {
            what: format!("{what}: padding bits after the last value are not zero"),
        });
    }
    let mut out = Vec::with_capacity(count);
    let mut bit = 0usize;
    for _ in 0..count {
        let mut v = 0u64;
        let mut got = 0;
        while got < bits {
            let shift = (bit % 8) as u32;
            let take = (8 - shift).min(bits - got);
            let chunk = (u64::from(bytes[bit / 8]) >> shift) & low_mask(take);
            v |= chunk << got;
            got += take;
            bit += take as usize;
        }
        out.push(v as u32);
    }
    Ok(out)
}

fn low_mask(bits: u32) -> u64 {
    (1u64 << bits) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_bit_order() {
        // a = 0b101, b = 0b011, c = 0b110 at 3 bits: byte 0 = c1c0 b2b1b0 a2a1a0.
        let bytes = pack([0b101u32, 0b011, 0b110].into_iter(), 3);
        assert_eq!(bytes, vec![0b10_011_101, 0b1]);
        assert_eq!(
            unpack(&bytes, 3, 3, "t").unwrap(),
            vec![0b101, 0b011, 0b110]
        );
    }

    #[test]
    fn round_trip_every_width() {
        for bits in 1..=32u32 {
            let values: Vec<u32> = (0..37u64)
                .map(|j| ((j * 2_654_435_761) & low_mask(bits)) as u32)
                .collect();
            let bytes = pack(values.iter().copied(), bits);
            assert_eq!(bytes.len(), (37 * bits as usize).div_ceil(8));
            assert_eq!(
                unpack(&bytes, bits, 37, "t").unwrap(),
                values,
                "bits {bits}"
            );
        }
    }

    #[test]
    fn rejects_wrong_length_and_dirty_padding() {
        let bytes = pack([1u32, 2, 3].into_iter(), 3);
        assert!(unpack(&bytes[..1], 3, 3, "t").is_err());
        let mut dirty = bytes.clone();
        dirty[1] |= 0x80;
        assert!(unpack(&dirty, 3, 3, "t").is_err());
    }
}

//! The IDX format of MNIST-style data sets, raw or gzipped.
//!
//! ```text
//! offset  size       field
//! 0       2          0x0000
//! 2       1          element type: 0x08 = unsigned byte (the only type read here)
//! 3       1          number of dimensions d (1 to 4)
//! 4       4·d        dimensions, big-endian u32
//! 4+4·d   Π dims     the elements, row-major
//! ```
//! A stream that starts with the gzip magic `1f 8b` is decompressed first. Every size is
//! checked before anything is allocated: the element count must fit [`MAX_IDX_BYTES`] and match
//! the bytes present exactly.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest IDX payload accepted, in bytes (decompressed).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<u8>,
}

/// Decodes IDX bytes (gzipped or raw).
///
/// # Errors
/// [`Error::InvalidIdx`] for a bad magic, element type or dimension count, a payload larger than
/// [`MAX_IDX_BYTES`], or a length that does not match the dimensions;
/// [`Error::CorruptGzip`] for a corrupt or truncated gzip stream.
pub fn read_idx(bytes: &[u8]) -> Result<Idx> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(MAX_IDX_BYTES + 64)
            .read_to_end(&mut raw)
            .map_err(|source| Error::CorruptGzip { source })?;
        return parse(&raw);
    }
    parse(bytes)
}

/// Reads and decodes an IDX file (gzipped or raw).
///
/// # Errors
/// [`Error::Io`] when the file cannot be read, else as [`read_idx`].
pub fn read_idx_file(path: &Path) -> Result<Idx> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    read_idx(&bytes)
}

fn parse(bytes: &[u8]) -> Result<Idx> {
    let invalid = |what, expected: u64, got: u64| Error::InvalidIdx {
        what,
        expected,
        got,
    };
    if bytes.len() < 4 {
        return Err(invalid("header length", 4, bytes.len() as u64));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(invalid(
            "magic (first two bytes)",
            0,
            u64::from(u16::from_be_bytes([bytes[0], bytes[1]])),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(invalid(
            "element type (0x08 = unsigned byte)",
            0x08,
            u64::from(bytes[2]),
        ));
    }
    let ndim = usize::from(bytes[3]);
    if !(1..=4).contains(&ndim) {
        return Err(invalid("number of dimensions (1 to 4)", 4, ndim as u64));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(invalid("header length", header as u64, bytes.len() as u64));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| invalid("element count", MAX_IDX_BYTES, u64::MAX))?;
    let payload = (bytes.len() - header) as u64;
    if payload != count {
        return Err(invalid(
            "payload length (product of the dimensions)",
            count,
            payload,
        ));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}

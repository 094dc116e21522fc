//! Kernel symmetries for transform-invariant clustering (TIC, paper §3.4).
//!
//! Transform ids follow the reference code's string `ihvoIHVO` (PAPER.md §1.6), for a
//! kernel `in` of size n×n and `out[r][c] =`:
//!
//! | id | letter | transform | `out[r][c]` |
//! |---|---|---|---|
//! | 0 | i | identity | `in[r][c]` |
//! | 1 | h | horizontal flip | `in[r][n−1−c]` |
//! | 2 | v | vertical flip | `in[n−1−r][c]` |
//! | 3 | o | rotate 180° | `in[n−1−r][n−1−c]` |
//! | 4 | I | rotate 90° clockwise | `in[n−1−c][r]` |
//! | 5 | H | anti-diagonal reflection | `in[n−1−c][n−1−r]` |
//! | 6 | V | transpose | `in[c][r]` |
//! | 7 | O | rotate 90° counter-clockwise | `in[c][n−1−r]` |
//!
//! Every transform is its own inverse except I ↔ O.

use crate::error::{Error, Result};

/// The set of kernel transforms a codebook is invariant to.
///
/// A stored index is `centroid + K·transform`, so a symmetry with `S` transforms multiplies
/// the index range (and adds `log2 S` bits per kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Symmetry {
    /// Plain k-means (`i`, S = 1).
    #[default]
    Identity,
    /// Identity and horizontal flip (`ih`, TIC2).
    Flip,
    /// Both flips and the 180° rotation (`ihvo`, TIC4).
    Flips,
    /// All 8 symmetries of the square (`ihvoIHVO`, TIC8).
    Dihedral,
}

impl Symmetry {
    /// Number of transforms `S`.
    pub fn transforms(self) -> usize {
        match self {
            Symmetry::Identity => 1,
            Symmetry::Flip => 2,
            Symmetry::Flips => 4,
            Symmetry::Dihedral => 8,
        }
    }

    /// The reference code's option string (`i`, `ih`, `ihvo`, `ihvoIHVO`): the first `S`
    /// letters of `ihvoIHVO`. The same text as [`Display`](std::fmt::Display), without
    /// allocating; [`str::parse`] reads it back.
    pub fn letters(self) -> &'static str {
        &"ihvoIHVO"[..self.transforms()]
    }
}

impl std::fmt::Display for Symmetry {
    /// The reference code's option string, [`Symmetry::letters`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letters())
    }
}

impl std::str::FromStr for Symmetry {
    type Err = Error;

    /// Parses the reference code's option string: `i`, `ih`, `ihvo` or `ihvoIHVO` (what
    /// [`Display`](std::fmt::Display) writes).
    ///
    /// ```
    /// use clustered_conv::Symmetry;
    /// assert_eq!("ihvo".parse::<Symmetry>()?, Symmetry::Flips);
    /// assert_eq!(Symmetry::Dihedral.to_string(), "ihvoIHVO");
    /// let err = "iv".parse::<Symmetry>().unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"invalid symmetry "iv": expected i, ih, ihvo or ihvoIHVO"#
    /// );
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        [
            Symmetry::Identity,
            Symmetry::Flip,
            Symmetry::Flips,
            Symmetry::Dihedral,
        ]
        .into_iter()
        .find(|sym| sym.letters() == s)
        .ok_or_else(|| Error::Parse {
            what: "symmetry",
            input: s.to_string(),
            expected: "i, ih, ihvo or ihvoIHVO",
        })
    }
}

impl Symmetry {
    /// The coordinate permutation of every transform for `kh×kw` kernels (flattened row-major):
    /// `perm[t][j]` is the coordinate that transform `t` reads for output `j`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for [`Symmetry::Dihedral`] with non-square kernels (rotations
    /// swap the axes).
    pub(crate) fn permutations(self, kh: usize, kw: usize) -> Result<Vec<Vec<usize>>> {
        if self == Symmetry::Dihedral && kh != kw {
            return Err(Error::Unsupported {
                what: "Symmetry::Dihedral with non-square kernels",
                reason: "rotations swap the axes; use Flip or Flips",
            });
        }
        Ok((0..self.transforms())
            .map(|t| {
                let mut perm = vec![0; kh * kw];
                let ids: Vec<usize> = (0..kh * kw).collect();
                apply_rect(t, kh, kw, &ids, &mut perm);
                perm
            })
            .collect())
    }
}

/// The inverse of transform `t` (I ↔ O, every other transform is an involution).
pub(crate) fn inverse(t: usize) -> usize {
    match t {
        4 => 7,
        7 => 4,
        other => other,
    }
}

/// Source coordinate `(r', c')` that transform `t` reads for output `(r, c)` of a
/// `kh×kw` kernel (transforms 4–7 swap the axes and need `kh = kw`).
fn source(t: usize, (kh, kw): (usize, usize), r: usize, c: usize) -> (usize, usize) {
    let (mr, mc) = (kh - 1, kw - 1);
    match t {
        0 => (r, c),
        1 => (r, mc - c),
        2 => (mr - r, c),
        3 => (mr - r, mc - c),
        4 => (mc - c, r),
        5 => (mc - c, mr - r),
        6 => (c, r),
        7 => (c, mr - r),
        _ => unreachable!("transform ids are 0..8"),
    }
}

/// Applies transform `t` to the `kh×kw` kernel `src` (row-major) into `dst`.
pub(crate) fn apply_rect<F: Copy>(t: usize, kh: usize, kw: usize, src: &[F], dst: &mut [F]) {
    debug_assert!(t < 4 || kh == kw, "rotations need a square kernel");
    for r in 0..kh {
        for c in 0..kw {
            let (sr, sc) = source(t, (kh, kw), r, c);
            dst[r * kw + c] = src[sr * kw + sc];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [i32; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

    fn t(id: usize) -> [i32; 9] {
        let mut out = [0; 9];
        apply_rect(id, 3, 3, &K, &mut out);
        out
    }

    #[test]
    fn table_of_paper_section_1_6() {
        assert_eq!(t(0), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(t(1), [3, 2, 1, 6, 5, 4, 9, 8, 7]);
        assert_eq!(t(2), [7, 8, 9, 4, 5, 6, 1, 2, 3]);
        assert_eq!(t(3), [9, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(t(4), [7, 4, 1, 8, 5, 2, 9, 6, 3]);
        assert_eq!(t(5), [9, 6, 3, 8, 5, 2, 7, 4, 1]);
        assert_eq!(t(6), [1, 4, 7, 2, 5, 8, 3, 6, 9]);
        assert_eq!(t(7), [3, 6, 9, 2, 5, 8, 1, 4, 7]);
    }

    #[test]
    fn inverses_undo_every_transform() {
        for id in 0..8 {
            let fwd = t(id);
            let mut back = [0; 9];
            apply_rect(inverse(id), 3, 3, &fwd, &mut back);
            assert_eq!(back, K, "transform {id}");
        }
    }

    #[test]
    fn letters_round_trip() {
        let cases = [
            ("i", Symmetry::Identity),
            ("ih", Symmetry::Flip),
            ("ihvo", Symmetry::Flips),
            ("ihvoIHVO", Symmetry::Dihedral),
        ];
        for (s, sym) in cases {
            assert_eq!(s.parse::<Symmetry>().unwrap(), sym);
            assert_eq!(sym.to_string(), s);
            assert_eq!(sym.letters(), s);
        }
        for bad in ["iv", "", "I", "ihvoihvo", " i"] {
            assert!(
                matches!(
                    bad.parse::<Symmetry>(),
                    Err(Error::Parse { what: "symmetry", ref input, .. }) if input == bad
                ),
                "{bad:?}"
            );
        }
    }
}

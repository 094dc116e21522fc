//! The padding arithmetic every convolution kernel shares: which output positions of a row
//! (or column) read a pixel inside the image for one kernel tap.

/// Output positions `lo..hi` (of `0..out_len`) whose input index `j·stride + offset` lies in
/// `0..in_len`, and `first_in`, the input index of `lo`. Empty spans have `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub lo: usize,
    pub hi: usize,
    pub first_in: usize,
}

impl Span {
    /// The valid outputs for a tap at `offset` (kernel offset minus the leading padding,
    /// plus the first output's position times the stride).
    ///
    /// Sizes are bounded by the geometry limits, so the `isize` arithmetic cannot overflow.
    #[inline]
    pub fn valid(offset: isize, stride: usize, in_len: usize, out_len: usize) -> Span {
        let s = stride as isize;
        let ceil_div = |n: isize| (n + s - 1).div_euclid(s);
        let out = out_len as isize;
        let lo = ceil_div(-offset).clamp(0, out);
        let hi = ceil_div(in_len as isize - offset).clamp(lo, out);
        Span {
            lo: lo as usize,
            hi: hi as usize,
            first_in: (offset + lo * s).max(0) as usize,
        }
    }

    /// Number of valid positions.
    #[inline]
    pub fn len(&self) -> usize {
        self.hi - self.lo
    }

    /// Whether no position is valid.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.hi == self.lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, position by position.
    fn naive(offset: isize, stride: usize, in_len: usize, out_len: usize) -> Vec<usize> {
        (0..out_len)
            .filter(|&j| {
                let i = j as isize * stride as isize + offset;
                i >= 0 && (i as usize) < in_len
            })
            .collect()
    }

    #[test]
    fn span_is_the_set_of_valid_positions() {
        for offset in -9..9 {
            for stride in 1..4 {
                for in_len in 1..7 {
                    for out_len in 0..9 {
                        let span = Span::valid(offset, stride, in_len, out_len);
                        let want = naive(offset, stride, in_len, out_len);
                        let got: Vec<usize> = (span.lo..span.hi).collect();
                        assert_eq!(
                            got, want,
                            "offset {offset} stride {stride} {in_len}→{out_len}"
                        );
                        if let Some(&first) = want.first() {
                            let first_in = first as isize * stride as isize + offset;
                            assert_eq!(span.first_in as isize, first_in);
                        }
                    }
                }
            }
        }
    }
}

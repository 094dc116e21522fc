//! The execution plan of a clustered layer: which kernels share a stored index, grouped by
//! input channel (for conv-then-add) and by output channel (for add-then-conv).
//!
//! Built once from the frozen assignments. A *group* is one (channel, stored index) pair;
//! with transform-invariant codebooks a stored index is a (centroid, transform) pair, so two
//! kernels share a group only when both their centroid and their transform agree.

use ndarray::{Array2, ArrayView2};

use crate::scalar::Real;

/// Compressed-sparse groups: for every channel, the distinct stored indices it uses and, for
/// each, the channels on the other side that use it (with their scales).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Groups<F> {
    /// Groups of channel `c` are `channel_start[c]..channel_start[c + 1]`.
    pub channel_start: Vec<usize>,
    /// Stored index of every group (ascending within a channel).
    pub group_index: Vec<u32>,
    /// Members of group `g` are `member_start[g]..member_start[g + 1]`.
    pub member_start: Vec<usize>,
    /// The other-side channel of every member (ascending within a group).
    pub member_channel: Vec<u32>,
    /// The scale of every member (1 when the layer has no scales).
    pub member_scale: Vec<F>,
}

impl<F: Real> Groups<F> {
    /// Groups the entries of `indices` by row: row `r` becomes channel `r`, the columns
    /// using the same index its members.
    fn by_rows(indices: ArrayView2<u32>, scales: Option<ArrayView2<F>>) -> Self {
        let (rows, cols) = indices.dim();
        let mut g = Groups {
            channel_start: Vec::with_capacity(rows + 1),
            group_index: Vec::new(),
            member_start: vec![0],
            member_channel: Vec::with_capacity(rows * cols),
            member_scale: Vec::with_capacity(rows * cols),
        };
        let mut order: Vec<u32> = (0..cols as u32).collect();
        for r in 0..rows {
            g.channel_start.push(g.group_index.len());
            let row = indices.row(r);
            // Stable sort by index keeps the members of a group in ascending column order.
            order.sort_by_key(|&c| row[c as usize]);
            for (pos, &c) in order.iter().enumerate() {
                let index = row[c as usize];
                if pos == 0 || row[order[pos - 1] as usize] != index {
                    if pos > 0 {
                        g.member_start.push(g.member_channel.len());
                    }
                    g.group_index.push(index);
                }
                g.member_channel.push(c);
                g.member_scale
                    .push(scales.as_ref().map_or(F::one(), |s| s[[r, c as usize]]));
            }
            if cols > 0 {
                g.member_start.push(g.member_channel.len());
            }
            order.sort_unstable();
        }
        g.channel_start.push(g.group_index.len());
        g
    }

    /// Total number of groups: `Σ_c` distinct indices of channel `c`.
    pub fn len(&self) -> usize {
        self.group_index.len()
    }

    /// Group ids of channel `c`.
    pub fn of_channel(&self, c: usize) -> std::ops::Range<usize> {
        self.channel_start[c]..self.channel_start[c + 1]
    }

    /// Members of group `g`: (channel, scale) pairs.
    pub fn members(&self, g: usize) -> impl Iterator<Item = (usize, F)> + '_ {
        let r = self.member_start[g]..self.member_start[g + 1];
        self.member_channel[r.clone()]
            .iter()
            .zip(&self.member_scale[r])
            .map(|(&c, &s)| (c as usize, s))
    }
}

/// Both groupings of one layer, and the gather table of the input side.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan<F> {
    /// Per input channel `i`: the `V_i` distinct indices of column `i`, each with the output
    /// channels (and scales) that use it.
    pub by_input: Groups<F>,
    /// Per output channel `j`: the `U_j` distinct indices of row `j`, each with the input
    /// channels (and scales) that use it.
    pub by_output: Groups<F>,
    /// `(Cout, Cin)` row-major: the `by_input` group that kernel `(j, i)` belongs to.
    pub gather_group: Vec<u32>,
    /// `(Cout, Cin)` row-major: the scale of kernel `(j, i)` (1 without scales).
    pub gather_scale: Vec<F>,
}

impl<F: Real> Plan<F> {
    pub fn new(indices: &Array2<u32>, scales: Option<&Array2<F>>) -> Self {
        let by_input = Groups::by_rows(indices.t(), scales.map(|s| s.t()));
        let (cout, cin) = indices.dim();
        let mut gather_group = vec![0u32; cout * cin];
        for i in 0..cin {
            for g in by_input.of_channel(i) {
                for (o, _) in by_input.members(g) {
                    gather_group[o * cin + i] = g as u32;
                }
            }
        }
        let gather_scale = match scales {
            Some(s) => s.iter().copied().collect(),
            None => vec![F::one(); cout * cin],
        };
        Plan {
            by_output: Groups::by_rows(indices.view(), scales.map(|s| s.view())),
            by_input,
            gather_group,
            gather_scale,
        }
    }

    /// Splits the input channels into consecutive blocks whose groups number at most
    /// `max_groups` (at least one channel per block).
    pub fn input_blocks(&self, max_groups: usize) -> Vec<std::ops::Range<usize>> {
        let cin = self.by_input.channel_start.len() - 1;
        let mut blocks = Vec::new();
        let mut start = 0;
        while start < cin {
            let mut end = start + 1;
            while end < cin
                && self.by_input.channel_start[end + 1] - self.by_input.channel_start[start]
                    <= max_groups
            {
                end += 1;
            }
            blocks.push(start..end);
            start = end;
        }
        blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn groups_by_rows_and_columns() {
        let idx = array![[2u32, 0, 2], [1, 1, 0]];
        let sc = array![[1.0f64, 2.0, 3.0], [4.0, 5.0, 6.0]];
        let p = Plan::new(&idx, Some(&sc));
        // Row 0 uses {0: [col 1]}, {2: [cols 0, 2]}; row 1 uses {0: [2]}, {1: [0, 1]}.
        assert_eq!(p.by_output.len(), 4);
        assert_eq!(p.by_output.group_index, vec![0, 2, 0, 1]);
        let g: Vec<_> = p.by_output.members(1).collect();
        assert_eq!(g, vec![(0, 1.0), (2, 3.0)]);
        let g: Vec<_> = p.by_output.members(3).collect();
        assert_eq!(g, vec![(0, 4.0), (1, 5.0)]);
        // Column 0: {1: [row 1]}, {2: [row 0]}; column 1: {0: [0]}, {1: [1]}; column 2: {0: [1]}, {2: [0]}.
        assert_eq!(p.by_input.len(), 6);
        assert_eq!(p.by_input.of_channel(2), 4..6);
        let g: Vec<_> = p.by_input.members(5).collect();
        assert_eq!(g, vec![(0, 3.0)]);
    }
}

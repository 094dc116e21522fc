//! The execution plan of a clustered layer: which kernels share a stored index, grouped by
//! input channel (for conv-then-add) and by output channel (for add-then-conv).
//!
//! Built on first use from the frozen assignments; scales are not part of it. A *group* is
//! one (channel, stored index) pair; with transform-invariant codebooks a stored index is a
//! (centroid, transform) pair, so two kernels share a group only when both their centroid and
//! their transform agree.

use super::indices::{IndexStore, NarrowVec};

/// Compressed-sparse groups: for every channel, the distinct stored indices it uses and, for
/// each, the channels on the other side that use it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Groups {
    /// Groups of channel `c` are `channel_start[c]..channel_start[c + 1]`.
    pub channel_start: Vec<usize>,
    /// Stored index of every group (ascending within a channel), as narrow as the layer's
    /// indices.
    pub group_index: NarrowVec,
    /// Members of group `g` are `member_start[g]..member_start[g + 1]` (a layer has fewer
    /// than 2³² kernels).
    pub member_start: Vec<u32>,
    /// The other-side channel of every member (ascending within a group), in the narrowest
    /// type that holds the other side's channel count.
    pub member_channel: NarrowVec,
}

impl Groups {
    /// Groups the entries of a `rows × cols` matrix, `index(r, c)`, by row: row `r` becomes
    /// channel `r`, the columns using the same index its members.
    fn by_rows(rows: usize, cols: usize, index: impl Fn(usize, usize) -> u32) -> Self {
        let mut channel_start = Vec::with_capacity(rows + 1);
        let mut group_index = Vec::new();
        let mut member_start = vec![0u32];
        let mut member_channel = Vec::with_capacity(rows * cols);
        let mut order: Vec<u32> = (0..cols as u32).collect();
        let mut row = vec![0u32; cols];
        for r in 0..rows {
            channel_start.push(group_index.len());
            for (c, v) in row.iter_mut().enumerate() {
                *v = index(r, c);
            }
            // Stable sort by index keeps the members of a group in ascending column order.
            order.sort_by_key(|&c| row[c as usize]);
            for (pos, &c) in order.iter().enumerate() {
                let index = row[c as usize];
                if pos == 0 || row[order[pos - 1] as usize] != index {
                    if pos > 0 {
                        member_start.push(member_channel.len() as u32);
                    }
                    group_index.push(index);
                }
                member_channel.push(c);
            }
            if cols > 0 {
                member_start.push(member_channel.len() as u32);
            }
            order.sort_unstable();
        }
        channel_start.push(group_index.len());
        Groups {
            channel_start,
            group_index: NarrowVec::from_values(&group_index),
            member_start,
            member_channel: NarrowVec::with_max(cols.saturating_sub(1) as u32, member_channel),
        }
    }

    /// Total number of groups: `Σ_c` distinct indices of channel `c`.
    pub fn len(&self) -> usize {
        self.group_index.len()
    }

    /// Group ids of channel `c`.
    pub fn of_channel(&self, c: usize) -> std::ops::Range<usize> {
        self.channel_start[c]..self.channel_start[c + 1]
    }

    /// Member positions of group `g` (into the concatenated member lists).
    #[inline]
    pub fn member_range(&self, g: usize) -> std::ops::Range<usize> {
        self.member_start[g] as usize..self.member_start[g + 1] as usize
    }

    /// The stored index of group `g`.
    #[inline]
    pub fn index(&self, g: usize) -> usize {
        self.group_index.get(g) as usize
    }

    /// Members of group `g`: their other-side channels.
    pub fn members(&self, g: usize) -> impl Iterator<Item = usize> + '_ {
        self.member_channel
            .range(self.member_range(g))
            .map(|c| c as usize)
    }

    /// Bytes of the lists.
    fn bytes(&self) -> usize {
        self.channel_start.len() * std::mem::size_of::<usize>()
            + self.group_index.bytes()
            + self.member_start.len() * std::mem::size_of::<u32>()
            + self.member_channel.bytes()
    }
}

/// The kernel scales `(Cout, Cin)` as the sharing passes read them: the layer's own
/// (row-major), or all ones for a layer without scales. The plan holds no scales, so new
/// scales need no new plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KernelScales<'a, F> {
    values: &'a [F],
    /// `Cin` for the layer's scales; 0 for all ones (one row of `Cin` ones serves every
    /// output channel).
    row_stride: usize,
}

impl<'a, F: Copy> KernelScales<'a, F> {
    /// Row-major `(Cout, Cin)` scales.
    pub fn new(values: &'a [F], cin: usize) -> Self {
        KernelScales {
            values,
            row_stride: cin,
        }
    }

    /// All ones: `ones` holds `Cin` ones.
    pub fn ones(ones: &'a [F]) -> Self {
        KernelScales {
            values: ones,
            row_stride: 0,
        }
    }

    /// Whether these are the layer's own scales (not the all-ones table).
    pub fn are_layer_scales(&self) -> bool {
        self.row_stride != 0
    }

    /// The scale of kernel `(o, i)`.
    #[inline]
    pub fn get(&self, o: usize, i: usize) -> F {
        self.values[o * self.row_stride + i]
    }

    /// The scales of kernels `(o, i)` for `i` in `inputs`.
    #[inline]
    pub fn row(&self, o: usize, inputs: std::ops::Range<usize>) -> &'a [F] {
        &self.values[o * self.row_stride + inputs.start..o * self.row_stride + inputs.end]
    }
}

/// Both groupings of one layer, and the gather table of the input side. A function of the
/// stored indices only (scales are read from the layer).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Per input channel `i`: the `V_i` distinct indices of column `i`, each with the output
    /// channels that use it.
    pub by_input: Groups,
    /// Per output channel `j`: the `U_j` distinct indices of row `j`, each with the input
    /// channels that use it.
    pub by_output: Groups,
    /// `(Cout, Cin)` row-major: the position of kernel `(j, i)`'s `by_input` group among the
    /// groups of channel `i` (its global id is `by_input.channel_start[i]` plus this).
    pub gather_local: NarrowVec,
}

impl Plan {
    pub fn new(indices: &IndexStore) -> Self {
        let (cout, cin) = indices.dim();
        let by_input = Groups::by_rows(cin, cout, |i, o| indices.get(o, i));
        let by_output = Groups::by_rows(cout, cin, |o, i| indices.get(o, i));
        let mut gather_local = vec![0u32; cout * cin];
        for i in 0..cin {
            let range = by_input.of_channel(i);
            for g in range.clone() {
                for o in by_input.members(g) {
                    gather_local[o * cin + i] = (g - range.start) as u32;
                }
            }
        }
        Plan {
            by_input,
            by_output,
            gather_local: NarrowVec::from_values(&gather_local),
        }
    }

    fn cin(&self) -> usize {
        self.by_input.channel_start.len() - 1
    }

    fn cout(&self) -> usize {
        self.by_output.channel_start.len() - 1
    }

    /// Members of `by_output` group `g` of output channel `o`: (input channel, scale).
    #[inline]
    pub fn output_members<'a, F: Copy + 'a>(
        &'a self,
        o: usize,
        g: usize,
        scales: KernelScales<'a, F>,
    ) -> impl Iterator<Item = (usize, F)> + 'a {
        self.by_output
            .members(g)
            .map(move |i| (i, scales.get(o, i)))
    }

    /// Members of `by_input` group `g` of input channel `i`: (output channel, scale).
    #[inline]
    pub fn input_members<'a, F: Copy + 'a>(
        &'a self,
        i: usize,
        g: usize,
        scales: KernelScales<'a, F>,
    ) -> impl Iterator<Item = (usize, F)> + 'a {
        self.by_input.members(g).map(move |o| (o, scales.get(o, i)))
    }

    /// The gather table of a block of input channels: `(Cout, block)` row-major, the
    /// `by_input` group of kernel `(o, i)` relative to the block's first group.
    pub fn block_gather(&self, block: std::ops::Range<usize>) -> Vec<u32> {
        let (cout, cin) = (self.cout(), self.cin());
        let first = self.by_input.channel_start[block.start];
        let offsets: Vec<u32> = block
            .clone()
            .map(|i| (self.by_input.channel_start[i] - first) as u32)
            .collect();
        let mut table = vec![0u32; cout * block.len()];
        for (o, row) in table.chunks_exact_mut(block.len()).enumerate() {
            self.gather_local.copy_to(o * cin + block.start, row);
            for (v, &offset) in row.iter_mut().zip(&offsets) {
                *v += offset;
            }
        }
        table
    }

    /// Splits the input channels into consecutive blocks whose groups number at most
    /// `max_groups` (at least one channel per block).
    pub fn input_blocks(&self, max_groups: usize) -> Vec<std::ops::Range<usize>> {
        let cin = self.cin();
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

    /// Bytes of the plan's lists.
    pub fn bytes(&self) -> usize {
        self.by_input.bytes() + self.by_output.bytes() + self.gather_local.bytes()
    }
}

/// `(ΣU_j, ΣV_i)`: distinct indices per output channel and per input channel, summed; the
/// plan's group counts, without building it.
pub(crate) fn distinct_counts(indices: &IndexStore) -> (usize, usize) {
    let (cout, cin) = indices.dim();
    let count = |rows: usize, cols: usize, index: &dyn Fn(usize, usize) -> u32| -> usize {
        if indices.max() <= u32::from(u16::MAX) {
            // Stamp table: `seen[v] == r + 1` when row `r` has index `v`.
            let mut seen = vec![0usize; indices.max() as usize + 1];
            let mut total = 0;
            for r in 0..rows {
                for c in 0..cols {
                    let v = index(r, c) as usize;
                    if seen[v] != r + 1 {
                        seen[v] = r + 1;
                        total += 1;
                    }
                }
            }
            total
        } else {
            let mut row = Vec::with_capacity(cols);
            (0..rows)
                .map(|r| {
                    row.clear();
                    row.extend((0..cols).map(|c| index(r, c)));
                    row.sort_unstable();
                    row.dedup();
                    row.len()
                })
                .sum()
        }
    };
    (
        count(cout, cin, &|o, i| indices.get(o, i)),
        count(cin, cout, &|i, o| indices.get(o, i)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn groups_by_rows_and_columns() {
        let idx = IndexStore::new(&array![[2u32, 0, 2], [1, 1, 0]]);
        let sc = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let sc = KernelScales::new(&sc, 3);
        let p = Plan::new(&idx);
        assert_eq!(distinct_counts(&idx), (p.by_output.len(), p.by_input.len()));
        // Row 0 uses {0: [col 1]}, {2: [cols 0, 2]}; row 1 uses {0: [2]}, {1: [0, 1]}.
        assert_eq!(p.by_output.len(), 4);
        assert_eq!(
            p.by_output.group_index.iter().collect::<Vec<_>>(),
            vec![0, 2, 0, 1]
        );
        let g: Vec<_> = p.output_members(0, 1, sc).collect();
        assert_eq!(g, vec![(0, 1.0), (2, 3.0)]);
        let g: Vec<_> = p.output_members(1, 3, sc).collect();
        assert_eq!(g, vec![(0, 4.0), (1, 5.0)]);
        // Column 0: {1: [row 1]}, {2: [row 0]}; column 1: {0: [0]}, {1: [1]}; column 2: {0: [1]}, {2: [0]}.
        assert_eq!(p.by_input.len(), 6);
        assert_eq!(p.by_input.of_channel(2), 4..6);
        let g: Vec<_> = p.input_members(2, 5, sc).collect();
        assert_eq!(g, vec![(0, 3.0)]);
        // Kernel (0, 2) is in group 5, the second of column 2; (1, 0) in group 0.
        assert_eq!(p.gather_local.get(2), 1);
        assert_eq!(p.block_gather(0..3), vec![1, 2, 5, 0, 3, 4]);
        assert_eq!(p.block_gather(1..3), vec![0, 3, 1, 2]);
        let ones = [1.0f64; 3];
        let g: Vec<_> = p.output_members(1, 3, KernelScales::ones(&ones)).collect();
        assert_eq!(g, vec![(0, 1.0), (1, 1.0)]);
        // By input: 4 channel starts (usize), 6 u8 indices, 7 member starts (u32), 6 u8
        // members; by output: 3, 4, 5, 6; the gather table: 6 u8.
        assert_eq!(p.bytes(), (32 + 6 + 28 + 6) + (24 + 4 + 20 + 6) + 6);
    }
}

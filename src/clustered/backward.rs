//! The weight-sharing backward pass.
//!
//! For input channel `i` and one of its groups `g` (a distinct kernel `K_v` shared by output
//! channels `o ∈ g` with scales `s_oi`), let `G = Σ_{o∈g} s_oi·∂L/∂y_o`. Then
//! - `∂L/∂x_i = Σ_g K_v ⋆ᵀ G` (each shared kernel's transposed convolution done once),
//! - `∂L/∂K_v += corr(x_i, G)`, mapped back to its centroid through `Φ_t⁻¹`,
//! - `∂L/∂s_oi = ⟨∂L/∂y_o, K_v ⋆ x_i⟩` (when the layer has scales).

use ndarray::{Array2, Array3, Array4, ArrayView4, ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::indices::IndexStore;
use super::plan::{KernelScales, Plan};
use super::scales::ScaleStore;
use super::ClusteredGrads;
use crate::codebook::KernelCodebook;
use crate::geometry::ConvShape;
use crate::linalg::Real;
use crate::linalg::{channel_sums, correlate_add, correlate_kernel_grad, correlate_transpose_add};

/// What one input channel contributes: the kernel gradient of each of its groups and the
/// scale gradient of each member (in plan order).
struct ChannelGrads<F> {
    kernel_grads: Vec<F>,
    scale_grads: Vec<F>,
}

pub(crate) fn backward<F: Real>(
    codebook: &KernelCodebook<F>,
    plan: &Plan,
    kernel_scales: KernelScales<'_, F>,
    has_bias: bool,
    x: ArrayView4<F>,
    grad_out: ArrayView4<F>,
    s: &ConvShape,
) -> ClusteredGrads<F> {
    let x = x.as_standard_layout();
    let go = grad_out.as_standard_layout();
    let pass = SharingPass {
        plan,
        kernel_scales,
        has_scales: kernel_scales.are_layer_scales(),
        table: codebook.decoded_kernels(),
        x: x.view(),
        go: go.view(),
        s,
    };
    let mut grad_input = Array4::<F>::zeros((s.batch, s.cin, s.h, s.w));
    // One task per input channel (its planes across the batch); reductions below run in
    // channel order, so the result does not depend on the thread count.
    let per_channel: Vec<ChannelGrads<F>> = grad_input
        .axis_iter_mut(Axis(1))
        .into_par_iter()
        .enumerate()
        .map(|(i, gx_i)| pass.channel(i, gx_i))
        .collect();
    let (centroids, scales) = pass.reduce(codebook, &per_channel);
    ClusteredGrads {
        input: grad_input,
        centroids,
        scales,
        bias: has_bias.then(|| channel_sums(go.view())),
    }
}

/// What every input channel's task reads.
struct SharingPass<'a, F> {
    plan: &'a Plan,
    kernel_scales: KernelScales<'a, F>,
    has_scales: bool,
    /// The codebook's decoded kernels, `index · area` onwards.
    table: Vec<F>,
    x: ArrayView4<'a, F>,
    go: ArrayView4<'a, F>,
    s: &'a ConvShape,
}

impl<F: Real> SharingPass<'_, F> {
    fn area(&self) -> usize {
        self.s.kh * self.s.kw
    }

    /// Input channel `i`: its input gradient planes (written into `gx_i`, `(N, H, W)`), and the
    /// kernel and scale gradients of its groups.
    fn channel(&self, i: usize, mut gx_i: ArrayViewMut3<'_, F>) -> ChannelGrads<F> {
        let groups = &self.plan.by_input;
        let range = groups.of_channel(i);
        let members = groups.member_start[range.end] - groups.member_start[range.start];
        let mut grads = ChannelGrads {
            kernel_grads: vec![F::zero(); range.len() * self.area()],
            scale_grads: vec![F::zero(); members as usize],
        };
        let mut scratch = [vec![F::zero(); self.s.out_positions()], Vec::new()];
        if self.has_scales {
            scratch[1] = scratch[0].clone();
        }
        for n in 0..self.s.batch {
            let mut gx_ni = gx_i.index_axis_mut(Axis(0), n);
            let gx_ni = gx_ni.as_slice_mut().expect("fresh array is contiguous");
            self.channel_image(i, n, gx_ni, &mut grads, &mut scratch);
        }
        grads
    }

    /// Image `n` of input channel `i`: for each group (a distinct kernel shared by several
    /// output channels), the scaled output gradients are summed once (`shared`), then used
    /// for the input gradient, the kernel gradient and, with scales, each member's scale
    /// gradient (`response` is the kernel's response to the input).
    fn channel_image(
        &self,
        i: usize,
        n: usize,
        gx_ni: &mut [F],
        grads: &mut ChannelGrads<F>,
        [shared, response]: &mut [Vec<F>; 2],
    ) {
        let (s, area, groups) = (self.s, self.area(), &self.plan.by_input);
        let range = groups.of_channel(i);
        let first_member = groups.member_start[range.start] as usize;
        let x_n = self.x.index_axis(Axis(0), n);
        let x_ni = x_n.index_axis(Axis(0), i);
        let x_ni = x_ni.to_slice().expect("standard layout");
        let go_n = self.go.index_axis(Axis(0), n);
        let go_o = |o: usize| {
            go_n.index_axis(Axis(0), o)
                .to_slice()
                .expect("standard layout")
        };
        for (local, g) in range.enumerate() {
            let kernel = &self.table[groups.index(g) * area..][..area];
            shared.fill(F::zero());
            for (o, scale) in self.plan.input_members(i, g, self.kernel_scales) {
                for (d, &v) in shared.iter_mut().zip(go_o(o)) {
                    *d += scale * v;
                }
            }
            correlate_transpose_add(s, 0..s.oh, shared, kernel, gx_ni);
            let kernel_grad = &mut grads.kernel_grads[local * area..][..area];
            correlate_kernel_grad(s, 0..s.oh, x_ni, shared, kernel_grad);
            if self.has_scales {
                response.fill(F::zero());
                correlate_add(s, 0..s.oh, 0, x_ni, kernel, response);
                let start = groups.member_range(g).start - first_member;
                for (m, o) in groups.members(g).enumerate() {
                    grads.scale_grads[start + m] += dot(go_o(o), response);
                }
            }
        }
    }

    /// The channels' kernel gradients mapped back to their centroids (in channel order) and
    /// their scale gradients placed at `(o, i)`.
    fn reduce(
        &self,
        codebook: &KernelCodebook<F>,
        per_channel: &[ChannelGrads<F>],
    ) -> (Array3<F>, Option<Array2<F>>) {
        let (area, groups) = (self.area(), &self.plan.by_input);
        let mut centroids = Array3::<F>::zeros(codebook.centroids().dim());
        let mut scales = self
            .has_scales
            .then(|| Array2::<F>::zeros((self.s.cout, self.s.cin)));
        let centroid_flat = centroids.as_slice_mut().expect("fresh array is contiguous");
        for (i, ch) in per_channel.iter().enumerate() {
            let range = groups.of_channel(i);
            let first_member = groups.member_start[range.start] as usize;
            for (local, g) in range.enumerate() {
                let kernel_grad = &ch.kernel_grads[local * area..][..area];
                codebook.add_to_centroid_grad(groups.index(g), kernel_grad, centroid_flat);
                if let Some(sg) = scales.as_mut() {
                    let start = groups.member_range(g).start - first_member;
                    for (m, o) in groups.members(g).enumerate() {
                        sg[[o, i]] = ch.scale_grads[start + m];
                    }
                }
            }
        }
        (centroids, scales)
    }
}

/// `Σ a·b`, in order.
fn dot<F: Real>(a: &[F], b: &[F]) -> F {
    a.iter().zip(b).fold(F::zero(), |acc, (&u, &v)| acc + u * v)
}

/// Folds a dense weight gradient `(Cout, Cin, kh, kw)` into the gradients of the centroids
/// (`Σ s·Φ_t⁻¹(∂L/∂w)` over the kernels using each) and of the scales (`⟨∂L/∂w, Φ_t(μ_c)⟩`).
/// Sequential in `(o, i)` order, so the sums do not depend on the thread count.
pub(crate) fn fold_weight_grad<F: Real>(
    codebook: &KernelCodebook<F>,
    indices: &IndexStore,
    scales: Option<&ScaleStore<F>>,
    grad_weight: &Array4<F>,
) -> (Array3<F>, Option<Array2<F>>) {
    let (k, (kh, kw)) = (codebook.len(), codebook.kernel_size());
    let area = kh * kw;
    let table = codebook.decoded_kernels();
    let grad_weight = grad_weight.as_standard_layout();
    let flat = grad_weight.as_slice().expect("standard layout");
    let mut centroids = vec![F::zero(); k * area];
    let mut scale_grads = scales.map(|s| Array2::<F>::zeros(s.dim()));
    let mut scaled = vec![F::zero(); area];
    let cin = indices.dim().1;
    for (k, index) in indices.iter().enumerate() {
        let (o, i, index) = (k / cin, k % cin, index as usize);
        let g = &flat[k * area..][..area];
        let s = scales.map_or(F::one(), |s| s.get(o, i));
        for (d, &v) in scaled.iter_mut().zip(g) {
            *d = s * v;
        }
        codebook.add_to_centroid_grad(index, &scaled, &mut centroids);
        if let Some(sg) = scale_grads.as_mut() {
            let kernel = &table[index * area..][..area];
            sg[[o, i]] = g
                .iter()
                .zip(kernel)
                .fold(F::zero(), |a, (&x, &y)| a + x * y);
        }
    }
    let centroids = Array3::from_shape_vec((k, kh, kw), centroids).expect("K·kh·kw values");
    (centroids, scale_grads)
}

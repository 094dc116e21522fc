//! Fitting a codebook: builder → validated params → `fit` (or a [`CodebookFitter`] for
//! masks and a progress callback).

use ndarray::{Array3, ArrayView2, ArrayView4};

use super::{
    prepare_kernels, KernelAssignment, KernelCodebook, PreparedKernels, ScaleScheme, Symmetry,
};
use crate::error::{Error, Result};
use crate::kmeans::{
    Convergence, Init, IterationStats, KMeansParams, KMeansProgress, Transforms, ValidKMeansParams,
};
use crate::linalg::Real;

/// Unchecked codebook settings (builder); [`CodebookParams::check`] validates them.
///
/// Defaults: seed 0, `n_init` 1, `max_iter` 300, `tol` 1e-4, greedy k-means++,
/// L2-norm scales stored as f16 ([`ScaleScheme::default`], the paper's default),
/// [`Symmetry::Identity`].
///
/// ```
/// use clustered_conv::{KernelCodebook, ScaleScheme};
/// use ndarray::Array4;
///
/// let conv1 = Array4::<f32>::from_shape_fn((8, 4, 3, 3), |(o, i, r, c)| (o + 2 * i + r * c) as f32 - 6.0);
/// let conv2 = Array4::<f32>::from_shape_fn((8, 8, 3, 3), |(o, i, r, c)| (o * i) as f32 - (r + c) as f32);
/// // One codebook shared by both layers (the paper's network-wide clustering).
/// let fit = KernelCodebook::params(6)
///     .seed(7)
///     .n_init(3)
///     .scale_scheme(ScaleScheme::None)
///     .fit(&[conv1.view(), conv2.view()])?;
/// assert_eq!(fit.assignments.len(), 2);
/// assert_eq!(fit.assignments[1].indices.dim(), (8, 8));
/// assert!(fit.assignments[0].scales.is_none());
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodebookParams {
    kmeans: KMeansParams,
    scale_scheme: ScaleScheme,
    symmetry: Symmetry,
}

/// Validated codebook settings: only [`CodebookParams::check`] makes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidCodebookParams {
    kmeans: ValidKMeansParams,
    scale_scheme: ScaleScheme,
    symmetry: Symmetry,
}

/// A fit with options: pruning masks, per-kernel importance and a progress callback. Made
/// by [`CodebookParams::fitter`]; [`CodebookFitter::run`] fits.
///
/// ```
/// use clustered_conv::KernelCodebook;
/// use ndarray::{Array2, Array4};
///
/// let w = Array4::<f32>::from_shape_fn((6, 4, 3, 3), |(o, i, r, c)| (o * 5 + i * 3 + r + 2 * c) as f32 % 7.0 - 3.0);
/// let keep = Array2::from_shape_fn((6, 4), |(o, i)| (o + i) % 3 != 0);
/// let mut iterations = 0;
/// let fit = KernelCodebook::params(4)
///     .fitter(&[w.view()])
///     .masks(&[keep.view()])
///     .progress(|_| iterations += 1)
///     .run()?;
/// assert_eq!(fit.n_iter, iterations);
/// // Pruned kernels: index 0, scale 0.
/// assert_eq!(fit.assignments[0].scales.as_ref().unwrap()[[0, 0]], 0.0);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
pub struct CodebookFitter<'a, F, P> {
    params: CodebookParams,
    weights: &'a [ArrayView4<'a, F>],
    masks: &'a [ArrayView2<'a, bool>],
    importance: &'a [ArrayView2<'a, f64>],
    progress: P,
}

/// The outcome of fitting a codebook.
#[derive(Debug, Clone, PartialEq)]
pub struct CodebookFit<F> {
    /// The codebook, centroids sorted by usage (most used first).
    pub codebook: KernelCodebook<F>,
    /// The stored form of every input tensor, in the order given; scales are exact (not
    /// rounded to the scheme's storage).
    pub assignments: Vec<KernelAssignment<F>>,
    /// k-means inertia of the clustered (normalised) kernels.
    pub inertia: f64,
    /// Lloyd iterations of the best run.
    pub n_iter: usize,
    /// Why the best run stopped.
    pub convergence: Convergence,
    /// Per-iteration statistics of the best run.
    pub history: Vec<IterationStats>,
}

impl CodebookParams {
    /// Defaults for `k` centroids.
    pub fn new(k: usize) -> Self {
        Self {
            kmeans: KMeansParams::new(k),
            scale_scheme: ScaleScheme::default(),
            symmetry: Symmetry::Identity,
        }
    }

    /// The same settings with `k` centroids (for per-group K).
    #[must_use]
    pub(crate) fn with_k(mut self, k: usize) -> Self {
        self.kmeans = self.kmeans.with_k(k);
        self
    }

    /// Number of centroids.
    pub fn k(&self) -> usize {
        self.kmeans.k()
    }

    /// The scale scheme the codebook will have.
    pub(crate) fn scheme(&self) -> ScaleScheme {
        self.scale_scheme
    }

    /// The symmetry the codebook will have.
    pub(crate) fn symmetry_setting(&self) -> Symmetry {
        self.symmetry
    }

    /// Seed of the k-means random number generator.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.kmeans = self.kmeans.seed(seed);
        self
    }

    /// Number of k-means restarts.
    #[must_use]
    pub fn n_init(mut self, n_init: usize) -> Self {
        self.kmeans = self.kmeans.n_init(n_init);
        self
    }

    /// Maximum Lloyd iterations per restart.
    #[must_use]
    pub fn max_iter(mut self, max_iter: usize) -> Self {
        self.kmeans = self.kmeans.max_iter(max_iter);
        self
    }

    /// Relative k-means tolerance (scikit-learn's definition).
    #[must_use]
    pub fn tol(mut self, tol: f64) -> Self {
        self.kmeans = self.kmeans.tol(tol);
        self
    }

    /// k-means seeding method.
    #[must_use]
    pub fn init(mut self, init: Init) -> Self {
        self.kmeans = self.kmeans.init(init);
        self
    }

    /// Whether kernels are normalised by a scale before clustering, and how compressed
    /// layers store the scales.
    #[must_use]
    pub fn scale_scheme(mut self, scale_scheme: ScaleScheme) -> Self {
        self.scale_scheme = scale_scheme;
        self
    }

    /// Transform invariance of the codebook.
    #[must_use]
    pub fn symmetry(mut self, symmetry: Symmetry) -> Self {
        self.symmetry = symmetry;
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    /// The k-means errors of [`KMeansParams::check`].
    pub fn check(&self) -> Result<ValidCodebookParams> {
        Ok(ValidCodebookParams {
            kmeans: self.kmeans.check()?,
            scale_scheme: self.scale_scheme,
            symmetry: self.symmetry,
        })
    }

    /// Validates, then fits one codebook to all kernels of `weights` (OIHW tensors with the
    /// same kernel size).
    ///
    /// # Errors
    /// See [`CodebookParams::check`] and [`ValidCodebookParams::fit`].
    pub fn fit<F: Real>(&self, weights: &[ArrayView4<F>]) -> Result<CodebookFit<F>> {
        self.fitter(weights).run()
    }

    /// A fit of `weights` with options ([`CodebookFitter::masks`],
    /// [`CodebookFitter::progress`]); settings are validated by [`CodebookFitter::run`].
    pub fn fitter<'a, F: Real>(
        &self,
        weights: &'a [ArrayView4<'a, F>],
    ) -> CodebookFitter<'a, F, fn(&KMeansProgress)> {
        CodebookFitter {
            params: *self,
            weights,
            masks: &[],
            importance: &[],
            progress: |_| {},
        }
    }
}

impl<'a, F: Real, P: FnMut(&KMeansProgress)> CodebookFitter<'a, F, P> {
    /// One `(Cout, Cin)` pruning mask per tensor (`false` = pruned): pruned kernels are left
    /// out of clustering and stored with index 0 (and scale 0 under L2 scales). Empty: no
    /// masks.
    #[must_use]
    pub fn masks(mut self, masks: &'a [ArrayView2<'a, bool>]) -> Self {
        self.masks = masks;
        self
    }

    /// One `(Cout, Cin)` array of per-kernel importance per tensor (finite, ≥ 0; e.g.
    /// [`Network::kernel_importance`](crate::nn::Network::kernel_importance)): sensitivity-
    /// weighted clustering (Choi, El-Khamy & Lee 2017), by
    /// [`ValidKMeansParams::fit_weighted`](crate::ValidKMeansParams::fit_weighted).
    /// Kernel `(o, i)` of tensor `t` weighs `importance[t][[o, i]]`, times its scale `s²`
    /// under L2 scales: a normalised kernel `u = w/s` stored as centroid `c` is off by
    /// `s·(u − c)` in weight space, so the weighted inertia is then the importance-weighted
    /// squared error of the reconstructed kernels, `Σ h·‖w − s·c‖²`. (To weight the
    /// normalised kernels by importance alone, pass `importance / s²`, `s²` being the
    /// kernel's squared L2 norm.) Kernels of importance 0 take no part in fitting the
    /// centroids (they are still assigned). Empty: unweighted, [`CodebookParams::fit`]'s
    /// exact result.
    ///
    /// ```
    /// use clustered_conv::{KernelCodebook, ScaleScheme};
    /// use ndarray::{Array2, Array4};
    ///
    /// let w = Array4::<f64>::from_shape_fn((6, 4, 3, 3), |(o, i, r, c)| ((o * 5 + i * 3 + r + 2 * c) % 7) as f64 - 3.0);
    /// // Only output channel 0 matters: with 4 centroids for its 4 kernels, it is exact.
    /// let importance = Array2::from_shape_fn((6, 4), |(o, _)| if o == 0 { 1.0 } else { 0.0 });
    /// let fit = KernelCodebook::params(4)
    ///     .scale_scheme(ScaleScheme::None)
    ///     .fitter(&[w.view()])
    ///     .importance(&[importance.view()])
    ///     .run()?;
    /// assert_eq!(fit.inertia, 0.0);
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    #[must_use]
    pub fn importance(mut self, importance: &'a [ArrayView2<'a, f64>]) -> Self {
        self.importance = importance;
        self
    }

    /// Calls `progress` after every Lloyd iteration (from the calling thread).
    pub fn progress<Q: FnMut(&KMeansProgress)>(self, progress: Q) -> CodebookFitter<'a, F, Q> {
        CodebookFitter {
            params: self.params,
            weights: self.weights,
            masks: self.masks,
            importance: self.importance,
            progress,
        }
    }

    /// Validates the settings and fits.
    ///
    /// # Errors
    /// As [`CodebookParams::check`] and [`ValidCodebookParams::fit`], plus masks or
    /// importance arrays whose number or shapes do not match the weights
    /// ([`Error::ShapeMismatch`]), a NaN or infinite importance ([`Error::NonFinite`], with
    /// the kernel position across the tensors), a negative one
    /// ([`Error::InvalidParameter`]), and the errors of
    /// [`ValidKMeansParams::fit_weighted`](crate::ValidKMeansParams::fit_weighted) (e.g.
    /// every clustered kernel of importance 0, or fewer kernels of positive importance than
    /// `k`).
    pub fn run(self) -> Result<CodebookFit<F>> {
        self.params
            .check()?
            .fit_impl(self.weights, self.masks, self.importance, self.progress)
    }
}

impl ValidCodebookParams {
    /// Number of centroids.
    pub fn k(&self) -> usize {
        self.kmeans.params().k()
    }

    /// The scale scheme the codebook will have.
    pub fn scale_scheme(&self) -> ScaleScheme {
        self.scale_scheme
    }

    /// The symmetry the codebook will have.
    pub fn symmetry(&self) -> Symmetry {
        self.symmetry
    }

    /// Fits one codebook to all kernels of `weights`.
    ///
    /// # Errors
    /// An empty list, differing kernel sizes ([`Error::KernelSizeMismatch`]), zero-sized or
    /// non-finite weights (a kernel height or width of 0 is [`Error::ZeroSize`]), or fewer
    /// clusterable kernels than `k` ([`Error::TooManyClusters`]; all-zero kernels do not
    /// count under L2 scales).
    ///
    /// # Determinism
    /// Bit-identical results for the same seed and inputs, whatever the number of threads.
    pub fn fit<F: Real>(&self, weights: &[ArrayView4<F>]) -> Result<CodebookFit<F>> {
        self.fit_impl(weights, &[], &[], |_| {})
    }

    /// A fit of `weights` with options, as [`CodebookParams::fitter`].
    pub fn fitter<'a, F: Real>(
        &self,
        weights: &'a [ArrayView4<'a, F>],
    ) -> CodebookFitter<'a, F, fn(&KMeansProgress)> {
        CodebookParams {
            kmeans: *self.kmeans.params(),
            scale_scheme: self.scale_scheme,
            symmetry: self.symmetry,
        }
        .fitter(weights)
    }

    fn fit_impl<F: Real>(
        &self,
        weights: &[ArrayView4<F>],
        masks: &[ArrayView2<bool>],
        importance: &[ArrayView2<f64>],
        progress: impl FnMut(&KMeansProgress),
    ) -> Result<CodebookFit<F>> {
        let first = weights.first().ok_or(Error::Empty {
            what: "the list of weight tensors",
        })?;
        let (_, _, kh, kw) = first.dim();
        let prepared = prepare_kernels(weights, masks, (kh, kw), self.scale_scheme)?;
        let transforms = Transforms::new(self.symmetry.permutations(kh, kw)?);
        let row_weights = row_weights(&prepared, weights, importance)?;
        let km = self.kmeans.fit_invariant(
            prepared.rows.view(),
            row_weights.as_deref(),
            &transforms,
            progress,
        )?;
        let k = km.centroids.nrows();
        let order = usage_order(&km.labels, k);
        // k-means label `t·K + c` → stored index `rank(c) + K·t`.
        let mut remap = vec![0usize; k * transforms.len()];
        for (new, &old) in order.iter().enumerate() {
            for t in 0..transforms.len() {
                remap[old + k * t] = new + k * t;
            }
        }
        let mut centroids = Array3::<F>::zeros((k, kh, kw));
        for (new, &old) in order.iter().enumerate() {
            let src = km.centroids.row(old);
            for (dst, &v) in centroids
                .index_axis_mut(ndarray::Axis(0), new)
                .iter_mut()
                .zip(src)
            {
                *dst = v;
            }
        }
        let codebook = KernelCodebook {
            centroids,
            symmetry: self.symmetry,
            scale_scheme: self.scale_scheme,
            winograd: Default::default(),
        };
        Ok(CodebookFit {
            assignments: prepared.assignments(&km.labels, &remap),
            codebook,
            inertia: km.inertia,
            n_iter: km.n_iter,
            convergence: km.convergence,
            history: km.history,
        })
    }
}

/// The k-means weight of every clustered row: its kernel's importance, times its scale
/// squared when the scheme has scales (`None` without importance).
fn row_weights<F: Real>(
    prepared: &PreparedKernels<F>,
    weights: &[ArrayView4<F>],
    importance: &[ArrayView2<f64>],
) -> Result<Option<Vec<f64>>> {
    if importance.is_empty() {
        return Ok(None);
    }
    if importance.len() != weights.len() {
        return Err(Error::ShapeMismatch {
            what: "number of importance arrays vs number of weight tensors",
            expected: vec![weights.len()],
            got: vec![importance.len()],
        });
    }
    let mut flat = Vec::with_capacity(prepared.source.len());
    for (w, h) in weights.iter().zip(importance) {
        if h.dim() != (w.dim().0, w.dim().1) {
            return Err(Error::ShapeMismatch {
                what: "kernel importance vs (out_channels, in_channels)",
                expected: vec![w.dim().0, w.dim().1],
                got: h.shape().to_vec(),
            });
        }
        flat.extend(h.iter().copied());
    }
    if let Some(index) = flat.iter().position(|h| !h.is_finite()) {
        return Err(Error::NonFinite {
            what: "kernel importance (row = kernel position across the tensors, in order)",
            index,
        });
    }
    if let Some(&bad) = flat.iter().find(|&&h| h < 0.0) {
        return Err(Error::InvalidParameter {
            name: "kernel importance",
            value: bad,
            expected: "a finite value >= 0",
        });
    }
    Ok(Some(
        prepared
            .source
            .iter()
            .map(|&pos| {
                let s = prepared
                    .scales
                    .as_ref()
                    .map_or(1.0, |s| s[pos].to_f64_exact());
                flat[pos] * s * s
            })
            .collect(),
    ))
}

/// Cluster ids (label mod `k`: transforms folded, paper §1.5) sorted by member count,
/// descending (ties: lower id first).
fn usage_order(labels: &[usize], k: usize) -> Vec<usize> {
    let mut counts = vec![0usize; k];
    for &l in labels {
        counts[l % k] += 1;
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    order
}

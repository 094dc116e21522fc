//! Whole-network compression: which layers share a codebook, the clustered layers, and the
//! size report of PAPER.md §2.
//!
//! The input is an ordered list of named convolution layers. Every layer whose kernel has more
//! than one element is clustered (1×1 convolutions stay dense unless
//! [`CompressionConfig::cluster_pointwise`] is set); codebooks are shared per
//! [`CodebookScope`]; scales are rounded once, at compression, to the storage of the
//! codebooks' [`ScaleScheme`](crate::ScaleScheme), so the network in memory is exactly the
//! one a file would store.

mod keep;
mod network;
mod report;
mod scope;
mod search;

use ndarray::{Array1, Array2, Array4, ArrayView2};

use crate::clustered::ClusteredConv2d;
use crate::codebook::{CodebookFit, CodebookParams, Codebooks, KernelCodebook, ScaleScheme};
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;
use crate::kmeans::KMeansProgress;
use crate::linalg::Real;

pub use network::{CompressedLayer, CompressedNetwork, ReportBuilder};
pub use report::{CodebookReport, CompressionReport, LayerReport};
pub use scope::{CodebookScope, LayerGroup};

use keep::DenseReason;

/// One named convolution layer of a network.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvLayer<F> {
    /// Name (e.g. `features.0`), kept through compression.
    pub name: String,
    /// OIHW weight.
    pub weight: Array4<F>,
    /// Bias of length `Cout`, if any.
    pub bias: Option<Array1<F>>,
    /// Stride, padding, dilation.
    pub geometry: ConvGeometry,
    /// Pruning mask `(Cout, Cin)`, `false` = pruned: pruned kernels are left out of
    /// clustering and stay zero.
    pub mask: Option<Array2<bool>>,
}

/// The shape of one convolution layer, for size and FLOP reports without weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerShape {
    /// Name.
    pub name: String,
    /// `(Cout, Cin, kh, kw)`.
    pub weight: (usize, usize, usize, usize),
    /// Stride, padding, dilation.
    pub geometry: ConvGeometry,
    /// Input spatial size, when known (for FLOP counts).
    pub input_hw: Option<(usize, usize)>,
}

/// Settings of [`compress`]: the codebook builder (K, seed, restarts, iterations,
/// tolerance, seeding, symmetry, scale scheme) and how codebooks are shared.
///
/// Defaults: [`KernelCodebook::params`]`(256)` with its defaults (L2-norm scales stored as
/// f16, [`Symmetry::Identity`](crate::Symmetry::Identity), seed 0, one k-means run of at
/// most 300 iterations, tolerance 1e-4), [`CodebookScope::Shared`], 1×1 convolutions left
/// dense, no keep-dense patterns, the default keep-dense rule off (the command line turns it
/// on; see [`default_keep_dense`](Self::default_keep_dense)), no error budget.
///
/// Which layers stay dense, in this order of precedence (the report says why, in
/// [`LayerReport::dense_reason`]): 1×1 convolutions unless
/// [`cluster_pointwise`](Self::cluster_pointwise); layers whose name matches a
/// [`keep_dense`](Self::keep_dense) pattern; with [`default_keep_dense`](Self::default_keep_dense),
/// layers that read the image or hold few kernels; with [`max_error`](Self::max_error),
/// layers that no K of the ladder compresses within the budget. A dense layer's weights are
/// the input's, bit for bit.
///
/// ```
/// use clustered_conv::{compress, CompressedLayer, CompressionConfig, ConvGeometry, ConvLayer, KernelCodebook};
/// use ndarray::Array4;
///
/// let layer = |name: &str, o, i| ConvLayer {
///     name: name.to_string(),
///     weight: Array4::<f32>::from_shape_fn((o, i, 3, 3), |(a, b, r, c)| ((a * 3 + b * 5 + r + c) % 7) as f32 - 3.0),
///     bias: None,
///     geometry: ConvGeometry::default().padding(1, 1),
///     mask: None,
/// };
/// let layers = vec![layer("stem", 8, 1), layer("body.0", 16, 8), layer("body.1", 16, 16)];
/// let config = CompressionConfig {
///     codebook: KernelCodebook::params(8),
///     keep_dense: vec!["body.1".to_string()],
///     default_keep_dense: true,
///     ..Default::default()
/// };
/// let net = compress(&layers, &config)?;
/// // `stem` reads the image (default rule), `body.1` matches the pattern.
/// assert!(matches!(net.layers()[0], CompressedLayer::Dense { .. }));
/// assert!(matches!(net.layers()[1], CompressedLayer::Clustered { .. }));
/// assert!(matches!(net.layers()[2], CompressedLayer::Dense { .. }));
/// let report = net.report().against(&layers).build()?;
/// assert_eq!(report.layers[2].dense_reason.as_deref(), Some("matched pattern `body.1`"));
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionConfig {
    /// How every codebook is fitted. Its K is the centroids per codebook (for
    /// [`CodebookScope::Groups`], each group's own K is used instead), capped at the number
    /// of kernels a codebook serves.
    pub codebook: CodebookParams,
    /// Which layers share a codebook.
    pub scope: CodebookScope,
    /// Cluster 1×1 convolutions too (the paper leaves them dense).
    pub cluster_pointwise: bool,
    /// Layers whose name matches one of these patterns stay dense. A pattern is a layer name,
    /// where `*` matches any run of characters (`features.0`, `layers.*`, `*conv1*`); no
    /// other character is special. A pattern that matches no layer is an error
    /// ([`Error::KeepDenseUnmatched`]).
    pub keep_dense: Vec<String>,
    /// The default keep-dense rule, recommended for real networks and on by default in the
    /// `clustered-conv compress` command (`--no-default-keep-dense` turns it off); off in
    /// [`CompressionConfig::default`], so that existing library callers get the networks
    /// they got before. A k×k layer stays dense when it has at
    /// most [`keep_dense_image_channels`](Self::keep_dense_image_channels) input channels (it
    /// reads the image) or fewer than [`keep_dense_kernels_per_k`](Self::keep_dense_kernels_per_k)`·K`
    /// kernels: clustering such a layer saves few bytes and costs the most accuracy. `K` is
    /// the codebook's K, or 16 (the ladder's first) with [`max_error`](Self::max_error). Not
    /// applied with [`CodebookScope::Groups`], whose groups name the clustered layers.
    pub default_keep_dense: bool,
    /// Input channels up to which the default rule keeps a layer dense (3: RGB, grey).
    pub keep_dense_image_channels: usize,
    /// Kernels per centroid below which the default rule keeps a layer dense (4).
    pub keep_dense_kernels_per_k: usize,
    /// Error budget: when set, every clustered layer gets its own codebook, whose K is the
    /// smallest of 16, 32, …, 1024 (capped at the layer's kernels, and below the K whose
    /// codebook, indices and scales would take as many bytes as the dense weight) for which
    /// the layer's relative error `‖W − Ŵ‖ / ‖W‖` is at most this; a layer that no K meets
    /// stays dense.
    /// The codebook's own K is then not used, [`CodebookScope::Shared`] and
    /// [`CodebookScope::PerLayer`] both mean one codebook per layer, and
    /// [`CodebookScope::Groups`] is an error. Must be finite and > 0. The K and error
    /// tried per layer are in [`LayerReport::error_by_k`].
    pub max_error: Option<f64>,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            codebook: KernelCodebook::params(256),
            scope: CodebookScope::Shared,
            cluster_pointwise: false,
            keep_dense: Vec::new(),
            default_keep_dense: false,
            keep_dense_image_channels: 3,
            keep_dense_kernels_per_k: 4,
            max_error: None,
        }
    }
}

/// One codebook's place in the network: its kernel size, K, and the layers that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodebookPlan {
    pub kernel: (usize, usize),
    pub k: usize,
    pub layers: Vec<usize>,
}

impl CompressionConfig {
    /// The defaults with these codebook settings.
    ///
    /// ```
    /// use clustered_conv::{CompressionConfig, KernelCodebook, Symmetry};
    /// let config = CompressionConfig::new(KernelCodebook::params(128).symmetry(Symmetry::Flip));
    /// assert_eq!(config.codebook.k(), 128);
    /// ```
    pub fn new(codebook: CodebookParams) -> Self {
        CompressionConfig {
            codebook,
            ..Self::default()
        }
    }

    /// The codebooks and, per layer, the codebook it uses (`None`: left dense, as `dense`
    /// says). `K` is capped at the number of kernels a codebook serves.
    pub(crate) fn plan_codebooks(
        &self,
        shapes: &[(usize, usize, usize, usize)],
        dense: &[Option<DenseReason>],
    ) -> Result<(Vec<CodebookPlan>, Vec<Option<usize>>)> {
        let clustered: Vec<usize> = (0..shapes.len()).filter(|&l| dense[l].is_none()).collect();
        let mut plans: Vec<CodebookPlan> = Vec::new();
        match &self.scope {
            CodebookScope::Shared if self.max_error.is_none() => {
                for &l in &clustered {
                    let kernel = (shapes[l].2, shapes[l].3);
                    match plans.iter_mut().find(|p| p.kernel == kernel) {
                        Some(p) => p.layers.push(l),
                        None => plans.push(CodebookPlan {
                            kernel,
                            k: self.codebook.k(),
                            layers: vec![l],
                        }),
                    }
                }
            }
            CodebookScope::Shared | CodebookScope::PerLayer => {
                for &l in &clustered {
                    plans.push(CodebookPlan {
                        kernel: (shapes[l].2, shapes[l].3),
                        k: self.codebook.k(),
                        layers: vec![l],
                    });
                }
            }
            CodebookScope::Groups(groups) => {
                let owner = scope::group_of_layers(groups, clustered.len())?;
                for (g, group) in groups.iter().enumerate() {
                    let layers: Vec<usize> = (0..clustered.len())
                        .filter(|&o| owner[o] == g)
                        .map(|o| clustered[o])
                        .collect();
                    let kernel = (shapes[layers[0]].2, shapes[layers[0]].3);
                    if let Some(&other) = layers
                        .iter()
                        .find(|&&l| (shapes[l].2, shapes[l].3) != kernel)
                    {
                        return Err(Error::KernelSizeMismatch {
                            tensor: other,
                            expected: kernel,
                            got: (shapes[other].2, shapes[other].3),
                        });
                    }
                    plans.push(CodebookPlan {
                        kernel,
                        k: group.k,
                        layers,
                    });
                }
            }
        }
        let mut codebook_of = vec![None; shapes.len()];
        for (c, plan) in plans.iter_mut().enumerate() {
            let kernels: usize = plan.layers.iter().map(|&l| shapes[l].0 * shapes[l].1).sum();
            plan.k = plan.k.min(kernels);
            for &l in &plan.layers {
                codebook_of[l] = Some(c);
            }
        }
        Ok((plans, codebook_of))
    }

    /// The size report of compressing layers of these shapes, without weights (no
    /// reconstruction error or entropy): the paper's arithmetic.
    ///
    /// # Errors
    /// Invalid groups (see [`CodebookScope::parse_groups`]) or shapes.
    pub fn plan(&self, shapes: &[LayerShape]) -> Result<CompressionReport> {
        self.check_max_error()?;
        let named: Vec<_> = shapes.iter().map(|s| (s.name.as_str(), s.weight)).collect();
        let dense = self.dense_reasons(&named)?;
        let dims: Vec<_> = shapes.iter().map(|s| s.weight).collect();
        let (plans, codebook_of) = self.plan_codebooks(&dims, &dense)?;
        let reasons: Vec<_> = dense
            .iter()
            .map(|r| r.as_ref().map(|r| r.to_string()))
            .collect();
        report::from_plan(
            report::Settings::of(&self.codebook),
            shapes,
            &plans,
            &codebook_of,
            None,
            &report::Dense {
                mask_bits: &vec![0; shapes.len()],
                reasons: &reasons,
            },
        )
    }

    /// [`CompressionConfig::max_error`], when set, is finite and > 0, and the scope is not
    /// explicit groups.
    fn check_max_error(&self) -> Result<()> {
        let Some(e) = self.max_error else {
            return Ok(());
        };
        if !(e.is_finite() && e > 0.0) {
            return Err(Error::InvalidParameter {
                name: "max_error",
                value: e,
                expected: "a finite relative error > 0",
            });
        }
        if matches!(self.scope, CodebookScope::Groups(_)) {
            return Err(Error::Unsupported {
                what: "an error budget (max_error) with explicit codebook groups",
                reason:
                    "max_error chooses one codebook per layer; use the shared or per-layer scope",
            });
        }
        Ok(())
    }
}

/// Compresses a network: fits the codebooks of `config.scope`, assigns every kernel, rounds
/// the scales to the storage of `config.codebook`'s scale scheme, and builds the clustered
/// layers (1×1 layers stay dense unless `config.cluster_pointwise`). With f16 storage the
/// layers hold their scales as `f16` ([`ClusteredConv2d::with_half_scales`]). For a progress
/// callback, use [`CompressionConfig::compressor`].
///
/// ```
/// use clustered_conv::{compress, CompressionConfig, ConvGeometry, ConvLayer, KernelCodebook};
/// use ndarray::Array4;
///
/// let layer = |name: &str, o, i| ConvLayer {
///     name: name.to_string(),
///     weight: Array4::<f32>::from_shape_fn((o, i, 3, 3), |(a, b, r, c)| ((a * 3 + b * 5 + r + c) % 7) as f32 - 3.0),
///     bias: None,
///     geometry: ConvGeometry::default().padding(1, 1),
///     mask: None,
/// };
/// let layers = vec![layer("conv1", 8, 3), layer("conv2", 16, 8)];
/// let config = CompressionConfig { codebook: KernelCodebook::params(8), ..Default::default() };
/// let net = compress(&layers, &config)?;
/// assert_eq!(net.codebooks().len(), 1); // both 3×3 layers share one codebook
/// let report = net.report().against(&layers).build()?;
/// println!("{report}");
/// assert!(report.ratio() > 1.0);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
///
/// # Errors
/// Invalid codebook settings, invalid groups, layers whose kernel sizes differ within a
/// group, non-finite weights, or a group with fewer clusterable kernels than its K.
pub fn compress<F: Real>(
    layers: &[ConvLayer<F>],
    config: &CompressionConfig,
) -> Result<CompressedNetwork<F>> {
    config.compressor(layers).run()
}

/// Where a compression is: codebook `codebook` of `codebooks` (fitted over the layers
/// `layers`, ordinals into the input), after a k-means iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompressProgress<'a> {
    /// 0-based codebook being fitted.
    pub codebook: usize,
    /// Number of codebooks.
    pub codebooks: usize,
    /// The layers that share it (indices into the `layers` given to [`compress`]).
    pub layers: &'a [usize],
    /// The k-means iteration just finished.
    pub kmeans: &'a KMeansProgress,
}

/// A compression with options (a progress callback): made by
/// [`CompressionConfig::compressor`], run by [`Compressor::run`].
///
/// ```
/// use clustered_conv::{CompressionConfig, ConvGeometry, ConvLayer, KernelCodebook};
/// use ndarray::Array4;
///
/// let layers = vec![ConvLayer {
///     name: "conv".to_string(),
///     weight: Array4::<f32>::from_shape_fn((8, 4, 3, 3), |(a, b, r, c)| ((a * 3 + b * 5 + r + c) % 7) as f32 - 3.0),
///     bias: None,
///     geometry: ConvGeometry::default(),
///     mask: None,
/// }];
/// let config = CompressionConfig { codebook: KernelCodebook::params(4), ..Default::default() };
/// let mut iterations = 0;
/// let net = config.compressor(&layers).progress(|_| iterations += 1).run()?;
/// assert!(iterations >= 1);
/// assert_eq!(net.layers().len(), 1);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
pub struct Compressor<'a, F, P> {
    layers: &'a [ConvLayer<F>],
    config: &'a CompressionConfig,
    importance: &'a [ArrayView2<'a, f64>],
    progress: P,
}

impl CompressionConfig {
    /// A compression of `layers` under these settings, with options
    /// ([`Compressor::progress`]).
    pub fn compressor<'a, F: Real>(
        &'a self,
        layers: &'a [ConvLayer<F>],
    ) -> Compressor<'a, F, fn(&CompressProgress<'_>)> {
        Compressor {
            layers,
            config: self,
            importance: &[],
            progress: |_| {},
        }
    }
}

impl<'a, F: Real, P: FnMut(&CompressProgress<'_>)> Compressor<'a, F, P> {
    /// Calls `progress` after every k-means iteration of every codebook (for progress bars).
    pub fn progress<Q: FnMut(&CompressProgress<'_>)>(self, progress: Q) -> Compressor<'a, F, Q> {
        Compressor {
            layers: self.layers,
            config: self.config,
            importance: self.importance,
            progress,
        }
    }

    /// Per-kernel importance, one `(Cout, Cin)` array per layer of the input (entries of
    /// layers left dense are not read; e.g. the convolutions' entries of
    /// [`Network::kernel_importance`](crate::nn::Network::kernel_importance)): every
    /// codebook is fitted with [`CodebookFitter::importance`](crate::CodebookFitter::importance)
    /// over its layers' arrays. Empty: unweighted, [`compress`]'s exact result.
    ///
    /// ```
    /// use clustered_conv::{CompressionConfig, ConvGeometry, ConvLayer, KernelCodebook};
    /// use ndarray::{Array2, Array4};
    ///
    /// let layers = vec![ConvLayer {
    ///     name: "conv".to_string(),
    ///     weight: Array4::<f32>::from_shape_fn((8, 4, 3, 3), |(a, b, r, c)| ((a * 3 + b * 5 + r + c) % 7) as f32 - 3.0),
    ///     bias: None,
    ///     geometry: ConvGeometry::default(),
    ///     mask: None,
    /// }];
    /// let importance = Array2::from_shape_fn((8, 4), |(o, i)| 1.0 + (o * 4 + i) as f64);
    /// let config = CompressionConfig { codebook: KernelCodebook::params(4), ..Default::default() };
    /// let net = config.compressor(&layers).importance(&[importance.view()]).run()?;
    /// assert_eq!(net.codebooks().len(), 1);
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    #[must_use]
    pub fn importance(mut self, importance: &'a [ArrayView2<'a, f64>]) -> Self {
        self.importance = importance;
        self
    }

    /// Compresses, as [`compress`].
    ///
    /// # Errors
    /// As [`compress`], plus an importance list whose length differs from the layers' and
    /// the errors of [`CodebookFitter::run`](crate::CodebookFitter::run) for importance.
    pub fn run(mut self) -> Result<CompressedNetwork<F>> {
        let (layers, config) = (self.layers, self.config);
        if layers.is_empty() {
            return Err(Error::Empty {
                what: "the list of layers",
            });
        }
        let params = config.codebook.check()?;
        if !self.importance.is_empty() && self.importance.len() != layers.len() {
            return Err(Error::ShapeMismatch {
                what: "number of importance arrays vs number of layers",
                expected: vec![layers.len()],
                got: vec![self.importance.len()],
            });
        }
        config.check_max_error()?;
        let named: Vec<_> = layers
            .iter()
            .map(|l| (l.name.as_str(), l.weight.dim()))
            .collect();
        let mut dense = config.dense_reasons(&named)?;
        let dims: Vec<_> = layers.iter().map(|l| l.weight.dim()).collect();
        let (plans, _) = config.plan_codebooks(&dims, &dense)?;
        let mut codebooks = Codebooks::new();
        let mut clustered: Vec<Option<(usize, ClusteredConv2d<F>)>> = vec![None; layers.len()];
        let mut error_by_k = vec![Vec::new(); layers.len()];
        for c in 0..plans.len() {
            let fitted = match config.max_error {
                None => Some(self.fit_layers(c, &plans, plans[c].k, params.scale_scheme())?),
                Some(max_error) => {
                    let l = plans[c].layers[0];
                    let (found, tried) =
                        self.search(c, &plans, max_error, params.scale_scheme())?;
                    if found.is_none() {
                        dense[l] = Some(DenseReason::MaxError {
                            max_error,
                            largest_k: tried.last().map_or(0, |t| t.0),
                        });
                    }
                    error_by_k[l] = tried;
                    found
                }
            };
            if let Some((codebook, built)) = fitted {
                let id = codebooks.push(codebook);
                for (&l, layer) in plans[c].layers.iter().zip(built) {
                    clustered[l] = Some((id, layer));
                }
            }
        }
        let out = layers
            .iter()
            .zip(clustered)
            .map(|(orig, c)| match c {
                Some((codebook, layer)) => Ok(CompressedLayer::Clustered {
                    name: orig.name.clone(),
                    codebook,
                    layer: Box::new(layer),
                }),
                None => Ok(CompressedLayer::Dense {
                    name: orig.name.clone(),
                    layer: Conv2d::new(orig.weight.clone(), orig.bias.clone(), orig.geometry)?,
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        let reasons = dense.iter().map(|r| r.as_ref().map(|r| r.to_string()));
        Ok(
            CompressedNetwork::new(codebooks, out, params.scale_scheme())?
                .with_notes(reasons.zip(error_by_k).collect()),
        )
    }

    /// Fits codebook `c` of `plans` with `k` centroids and builds its layers, their scales
    /// rounded to `scheme`'s storage (once, here; f16 scales are held as stored, 2 bytes per
    /// kernel).
    fn fit_layers(
        &mut self,
        c: usize,
        plans: &[CodebookPlan],
        k: usize,
        scheme: ScaleScheme,
    ) -> Result<(KernelCodebook<F>, Vec<ClusteredConv2d<F>>)> {
        let layers = self.layers;
        let fit = self.fit_codebook(c, plans, k)?;
        let built = plans[c]
            .layers
            .iter()
            .zip(fit.assignments)
            .map(|(&l, a)| {
                let mut layer = ClusteredConv2d::new(
                    a.indices,
                    a.scales,
                    layers[l].bias.clone(),
                    layers[l].geometry,
                )?;
                if let Some(mask) = &layers[l].mask {
                    layer = layer.with_mask(mask.clone())?;
                }
                layer.round_scales_to(scheme)?;
                Ok(layer)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((fit.codebook, built))
    }

    /// Fits codebook `c` of `plans` with `k` centroids over its layers (with their masks and
    /// importance).
    fn fit_codebook(
        &mut self,
        c: usize,
        plans: &[CodebookPlan],
        k: usize,
    ) -> Result<CodebookFit<F>> {
        let (layers, plan) = (self.layers, &plans[c]);
        let weights: Vec<_> = plan
            .layers
            .iter()
            .map(|&l| layers[l].weight.view())
            .collect();
        let masks = plan_masks(layers, &plan.layers);
        let mask_views: Vec<_> = masks.iter().map(|m| m.view()).collect();
        let importance: Vec<ArrayView2<f64>> = if self.importance.is_empty() {
            Vec::new()
        } else {
            plan.layers.iter().map(|&l| self.importance[l]).collect()
        };
        let progress = &mut self.progress;
        self.config
            .codebook
            .with_k(k)
            .fitter(&weights)
            .masks(&mask_views)
            .importance(&importance)
            .progress(|kmeans| {
                progress(&CompressProgress {
                    codebook: c,
                    codebooks: plans.len(),
                    layers: &plan.layers,
                    kmeans,
                });
            })
            .run()
    }
}

/// The pruning masks of a codebook's layers: none when no layer has one, else one per layer
/// (all kept for a layer without a mask).
fn plan_masks<F>(layers: &[ConvLayer<F>], members: &[usize]) -> Vec<Array2<bool>> {
    if members.iter().all(|&l| layers[l].mask.is_none()) {
        return Vec::new();
    }
    members
        .iter()
        .map(|&l| {
            let (cout, cin, _, _) = layers[l].weight.dim();
            layers[l]
                .mask
                .clone()
                .unwrap_or_else(|| Array2::from_elem((cout, cin), true))
        })
        .collect()
}

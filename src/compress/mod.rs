//! Whole-network compression: which layers share a codebook, the clustered layers, and the
//! size report of PAPER.md §2.
//!
//! The input is an ordered list of named convolution layers. Every layer whose kernel has more
//! than one element is clustered (1×1 convolutions stay dense unless
//! [`CompressionConfig::cluster_pointwise`] is set); codebooks are shared per
//! [`CodebookScope`]; scales are rounded once, at compression, to the storage of the
//! codebooks' [`ScaleScheme`](crate::ScaleScheme), so the network in memory is exactly the
//! one a file would store.

mod network;
mod report;
mod scope;

use ndarray::{Array1, Array2, Array4, ArrayView2};

use crate::clustered::ClusteredConv2d;
use crate::codebook::{CodebookFit, CodebookParams, Codebooks, KernelCodebook};
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;
use crate::kmeans::KMeansProgress;
use crate::linalg::Real;

pub use network::{CompressedLayer, CompressedNetwork, ReportBuilder};
pub use report::{CodebookReport, CompressionReport, LayerReport};
pub use scope::{CodebookScope, LayerGroup};

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
/// dense.
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
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            codebook: KernelCodebook::params(256),
            scope: CodebookScope::Shared,
            cluster_pointwise: false,
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

    /// Whether a layer with this kernel size is clustered.
    fn clusters(&self, kernel: (usize, usize)) -> bool {
        kernel.0 * kernel.1 > 1 || self.cluster_pointwise
    }

    /// The codebooks and, per layer, the codebook it uses (`None`: left dense). `K` is capped
    /// at the number of kernels a codebook serves.
    pub(crate) fn plan_codebooks(
        &self,
        shapes: &[(usize, usize, usize, usize)],
    ) -> Result<(Vec<CodebookPlan>, Vec<Option<usize>>)> {
        let clustered: Vec<usize> = (0..shapes.len())
            .filter(|&l| self.clusters((shapes[l].2, shapes[l].3)))
            .collect();
        let mut plans: Vec<CodebookPlan> = Vec::new();
        match &self.scope {
            CodebookScope::Shared => {
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
            CodebookScope::PerLayer => {
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
        let dims: Vec<_> = shapes.iter().map(|s| s.weight).collect();
        let (plans, codebook_of) = self.plan_codebooks(&dims)?;
        report::from_plan(
            report::Settings::of(&self.codebook),
            shapes,
            &plans,
            &codebook_of,
            None,
            &vec![0; shapes.len()],
        )
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
        let dims: Vec<_> = layers.iter().map(|l| l.weight.dim()).collect();
        let (plans, codebook_of) = config.plan_codebooks(&dims)?;
        let mut codebooks = Codebooks::new();
        let mut clustered: Vec<Option<ClusteredConv2d<F>>> = vec![None; layers.len()];
        for (c, plan) in plans.iter().enumerate() {
            let fit = self.fit_codebook(c, &plans)?;
            for (&l, a) in plan.layers.iter().zip(fit.assignments) {
                let mut layer = ClusteredConv2d::new(
                    a.indices,
                    a.scales,
                    layers[l].bias.clone(),
                    layers[l].geometry,
                )?;
                if let Some(mask) = &layers[l].mask {
                    layer = layer.with_mask(mask.clone())?;
                }
                // Rounded once, here; f16 scales are held as stored (2 bytes per kernel).
                layer.round_scales_to(params.scale_scheme())?;
                clustered[l] = Some(layer);
            }
            codebooks.push(fit.codebook);
        }
        let layers = layers
            .iter()
            .zip(clustered)
            .zip(&codebook_of)
            .map(|((orig, c), cb)| match (c, cb) {
                (Some(layer), Some(codebook)) => Ok(CompressedLayer::Clustered {
                    name: orig.name.clone(),
                    codebook: *codebook,
                    layer: Box::new(layer),
                }),
                _ => Ok(CompressedLayer::Dense {
                    name: orig.name.clone(),
                    layer: Conv2d::new(orig.weight.clone(), orig.bias.clone(), orig.geometry)?,
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        CompressedNetwork::new(codebooks, layers, params.scale_scheme())
    }

    /// Fits codebook `c` of `plans` over its layers (with their masks and importance).
    fn fit_codebook(&mut self, c: usize, plans: &[CodebookPlan]) -> Result<CodebookFit<F>> {
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
            .with_k(plan.k)
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

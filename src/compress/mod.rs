//! Whole-network compression: which layers share a codebook, the clustered layers, and the
//! size report of PAPER.md §2.
//!
//! The input is an ordered list of named convolution layers. Every layer whose kernel has more
//! than one element is clustered (1×1 convolutions stay dense unless
//! [`CompressionConfig::cluster_pointwise`] is set); codebooks are shared per
//! [`CodebookScope`]; scales are rounded once, at compression, to [`ScalePrecision`], so the
//! network in memory is exactly the one a file would store.

mod precision;
mod report;
mod scope;

use ndarray::{Array1, Array2, Array4};

use crate::clustered::ClusteredConv2d;
use crate::codebook::{KernelCodebook, ScaleMode, Symmetry};
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::geometry::ConvGeometry;
use crate::kmeans::Progress;
use crate::linalg::Real;

pub use precision::ScalePrecision;
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

/// Settings of [`compress`].
///
/// Defaults: K = 256, [`CodebookScope::Shared`], [`Symmetry::Identity`],
/// [`ScalePrecision::F16`], seed 0, one k-means run of at most 300 iterations, tolerance 1e-4,
/// 1×1 convolutions left dense.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressionConfig {
    /// Centroids per codebook (for [`CodebookScope::Groups`], each group's own K is used).
    pub k: usize,
    /// Which layers share a codebook.
    pub scope: CodebookScope,
    /// Transform invariance of the codebooks.
    pub symmetry: Symmetry,
    /// How scales are stored.
    pub scales: ScalePrecision,
    /// k-means seed.
    pub seed: u64,
    /// k-means restarts.
    pub n_init: usize,
    /// k-means iteration limit.
    pub max_iter: usize,
    /// k-means relative tolerance.
    pub tol: f64,
    /// Cluster 1×1 convolutions too (the paper leaves them dense).
    pub cluster_pointwise: bool,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            k: 256,
            scope: CodebookScope::Shared,
            symmetry: Symmetry::Identity,
            scales: ScalePrecision::F16,
            seed: 0,
            n_init: 1,
            max_iter: 300,
            tol: 1e-4,
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
                            k: self.k,
                            layers: vec![l],
                        }),
                    }
                }
            }
            CodebookScope::PerLayer => {
                for &l in &clustered {
                    plans.push(CodebookPlan {
                        kernel: (shapes[l].2, shapes[l].3),
                        k: self.k,
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
            self,
            shapes,
            &plans,
            &codebook_of,
            None,
            &vec![0; shapes.len()],
        )
    }
}

/// A layer of a [`CompressedNetwork`].
#[derive(Debug, Clone, PartialEq)]
pub enum CompressedLayer<F> {
    /// Clustered against codebook `codebook` of the network.
    Clustered {
        /// The layer's name.
        name: String,
        /// Index of its codebook in [`CompressedNetwork::codebooks`].
        codebook: usize,
        /// The layer (boxed: the struct, with room for its execution plan, is large).
        layer: Box<ClusteredConv2d<F>>,
    },
    /// Left dense (e.g. a 1×1 convolution).
    Dense {
        /// The layer's name.
        name: String,
        /// The layer.
        layer: Conv2d<F>,
    },
}

impl<F> CompressedLayer<F> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        match self {
            CompressedLayer::Clustered { name, .. } | CompressedLayer::Dense { name, .. } => name,
        }
    }
}

/// A compressed network: the codebooks and every layer, in the original order.
#[derive(Debug, Clone, PartialEq)]
pub struct CompressedNetwork<F> {
    /// The codebooks.
    pub codebooks: Vec<KernelCodebook<F>>,
    /// The layers, in the order given to [`compress`].
    pub layers: Vec<CompressedLayer<F>>,
    /// Bits per stored scale.
    pub scales: ScalePrecision,
}

impl<F: Real> CompressedNetwork<F> {
    /// The dense equivalent of layer `index`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for an index out of range.
    pub fn dense_layer(&self, index: usize) -> Result<Conv2d<F>> {
        match self.layers.get(index) {
            Some(CompressedLayer::Clustered {
                codebook, layer, ..
            }) => layer.to_conv(&self.codebooks[*codebook]),
            Some(CompressedLayer::Dense { layer, .. }) => Ok(layer.clone()),
            None => Err(Error::ShapeMismatch {
                what: "layer index vs number of layers",
                expected: vec![self.layers.len()],
                got: vec![index],
            }),
        }
    }

    /// Rounds every clustered layer's scales to [`CompressedNetwork::scales`] (after
    /// fine-tuning moved them off the grid), so the network can be saved exactly. With
    /// [`ScalePrecision::F16`] the layers then hold their scales as `f16`, 2 bytes per kernel
    /// ([`ClusteredConv2d::with_half_scales`]), as [`compress`] and a loaded file do.
    ///
    /// # Errors
    /// A scale that rounds to infinity (beyond the f16 range).
    pub fn round_scales(&mut self) -> Result<()> {
        let precision = self.scales;
        for layer in &mut self.layers {
            if let CompressedLayer::Clustered { layer, .. } = layer {
                if precision == ScalePrecision::F16 {
                    layer.make_scales_half()?;
                    continue;
                }
                if precision == ScalePrecision::None || layer.scales().is_none() {
                    continue;
                }
                let scales = layer.scales().map(|s| s.mapv(|v| precision.round(v)));
                let bias = layer.bias().cloned();
                layer.set_params(scales, bias)?;
            }
        }
        Ok(())
    }

    /// The size report of the network alone (no original weights: no reconstruction error),
    /// with each clustered layer's index entropy.
    ///
    /// # Errors
    /// An inconsistent network (a codebook index out of range).
    pub fn summary(&self) -> Result<CompressionReport> {
        let shapes: Vec<ConvLayer<F>> = (0..self.layers.len())
            .map(|l| {
                let dense = self.dense_layer(l)?;
                Ok(ConvLayer {
                    name: self.layers[l].name().to_string(),
                    weight: dense.weight().clone(),
                    bias: None,
                    geometry: dense.geometry(),
                    mask: None,
                })
            })
            .collect::<Result<_>>()?;
        let mut report = self.report_impl(&shapes, None)?;
        for line in &mut report.layers {
            line.relative_error = None;
        }
        Ok(report)
    }

    /// The size report, with each layer's relative reconstruction error against `original`
    /// and its index entropy.
    ///
    /// # Errors
    /// `original` does not match the network's layers.
    pub fn report(&self, original: &[ConvLayer<F>]) -> Result<CompressionReport> {
        self.report_impl(original, None)
    }

    /// As [`CompressedNetwork::report`], with each layer's input spatial size: adds dense MACs,
    /// the paper's FLOP count (§4.2) and the input side's real work per layer.
    ///
    /// # Errors
    /// As [`CompressedNetwork::report`], plus input sizes that do not match the layers.
    pub fn report_with_inputs(
        &self,
        original: &[ConvLayer<F>],
        input_hw: &[(usize, usize)],
    ) -> Result<CompressionReport> {
        if input_hw.len() != self.layers.len() {
            return Err(Error::ShapeMismatch {
                what: "input sizes vs layers",
                expected: vec![self.layers.len()],
                got: vec![input_hw.len()],
            });
        }
        self.report_impl(original, Some(input_hw))
    }

    fn report_impl(
        &self,
        original: &[ConvLayer<F>],
        input_hw: Option<&[(usize, usize)]>,
    ) -> Result<CompressionReport> {
        if original.len() != self.layers.len() {
            return Err(Error::ShapeMismatch {
                what: "original layers vs compressed layers",
                expected: vec![self.layers.len()],
                got: vec![original.len()],
            });
        }
        let mut shapes: Vec<LayerShape> = original.iter().map(shape_of).collect();
        if let Some(hw) = input_hw {
            for (shape, &hw) in shapes.iter_mut().zip(hw) {
                shape.input_hw = Some(hw);
            }
        }
        let mut costs = vec![None; self.layers.len()];
        let mut codebook_of = vec![None; self.layers.len()];
        let mut plans: Vec<CodebookPlan> = self
            .codebooks
            .iter()
            .map(|cb| CodebookPlan {
                kernel: cb.kernel_size(),
                k: cb.len(),
                layers: Vec::new(),
            })
            .collect();
        let mut measured = Vec::with_capacity(self.layers.len());
        let mut mask_bits = vec![0u32; self.layers.len()];
        for (l, (layer, orig)) in self.layers.iter().zip(original).enumerate() {
            let (cout, cin, kh, kw) = orig.weight.dim();
            let stored = match layer {
                CompressedLayer::Clustered {
                    codebook, layer, ..
                } => {
                    let (kh, kw) = self.codebooks[*codebook].kernel_size();
                    (layer.out_channels(), layer.in_channels(), kh, kw)
                }
                CompressedLayer::Dense { layer, .. } => layer.weight().dim(),
            };
            if stored != (cout, cin, kh, kw) {
                return Err(Error::ShapeMismatch {
                    what: "original layer weight vs the compressed layer",
                    expected: vec![stored.0, stored.1, stored.2, stored.3],
                    got: vec![cout, cin, kh, kw],
                });
            }
            match layer {
                CompressedLayer::Clustered {
                    codebook, layer, ..
                } => {
                    mask_bits[l] = u32::from(layer.mask().is_some());
                    codebook_of[l] = Some(*codebook);
                    plans[*codebook].layers.push(l);
                    let cb = &self.codebooks[*codebook];
                    let w = layer.to_conv(cb)?;
                    let indices = layer.indices();
                    let entropy = cb.usage(&[indices.view()])?.entropy_bits();
                    measured.push(Some((relative_error(w.weight(), &orig.weight), entropy)));
                    if let Some(hw) = input_hw {
                        costs[l] = Some(layer.cost(cb, hw[l])?);
                    }
                }
                CompressedLayer::Dense { .. } => measured.push(None),
            }
        }
        let config = CompressionConfig {
            symmetry: self
                .codebooks
                .first()
                .map_or(Symmetry::Identity, |c| c.symmetry()),
            scales: self.scales,
            ..CompressionConfig::default()
        };
        let mut report = report::from_plan(
            &config,
            &shapes,
            &plans,
            &codebook_of,
            Some(&measured),
            &mask_bits,
        )?;
        for (line, cost) in report.layers.iter_mut().zip(costs) {
            if let Some(cost) = cost {
                line.paper_flops = Some(cost.paper_flops);
                line.input_side_work = Some(cost.input_side.conv_macs + cost.input_side.adds);
            }
        }
        Ok(report)
    }
}

fn shape_of<F>(layer: &ConvLayer<F>) -> LayerShape {
    LayerShape {
        name: layer.name.clone(),
        weight: layer.weight.dim(),
        geometry: layer.geometry,
        input_hw: None,
    }
}

/// `‖a − b‖ / ‖b‖` in `f64`.
fn relative_error<F: Real>(a: &Array4<F>, b: &Array4<F>) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (&x, &y) in a.iter().zip(b.iter()) {
        num += (x.to_f64_exact() - y.to_f64_exact()).powi(2);
        den += y.to_f64_exact().powi(2);
    }
    if den == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

/// Compresses a network: fits the codebooks of `config.scope`, assigns every kernel, rounds
/// the scales to `config.scales`, and builds the clustered layers (1×1 layers stay dense
/// unless `config.cluster_pointwise`). With [`ScalePrecision::F16`] the layers hold their
/// scales as `f16` ([`ClusteredConv2d::with_half_scales`]).
///
/// ```
/// use clustered_conv::{compress, CompressionConfig, ConvGeometry, ConvLayer, ScalePrecision};
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
/// let config = CompressionConfig { k: 8, scales: ScalePrecision::F16, ..Default::default() };
/// let net = compress(&layers, &config)?;
/// assert_eq!(net.codebooks.len(), 1); // both 3×3 layers share one codebook
/// let report = net.report(&layers)?;
/// println!("{report}");
/// assert!(report.ratio() > 1.0);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
///
/// # Errors
/// Invalid groups, layers whose kernel sizes differ within a group, non-finite weights, or a
/// group with fewer clusterable kernels than its K.
pub fn compress<F: Real>(
    layers: &[ConvLayer<F>],
    config: &CompressionConfig,
) -> Result<CompressedNetwork<F>> {
    compress_with_progress(layers, config, |_| {})
}

/// Where [`compress_with_progress`] is: codebook `codebook` of `codebooks` (fitted over the
/// layers `layers`, ordinals into the input), after a k-means iteration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompressProgress<'a> {
    /// 0-based codebook being fitted.
    pub codebook: usize,
    /// Number of codebooks.
    pub codebooks: usize,
    /// The layers that share it (indices into the `layers` given to [`compress`]).
    pub layers: &'a [usize],
    /// The k-means iteration just finished.
    pub kmeans: &'a Progress,
}

/// As [`compress`], calling `progress` after every k-means iteration of every codebook (for
/// progress bars).
///
/// # Errors
/// As [`compress`].
pub fn compress_with_progress<F: Real>(
    layers: &[ConvLayer<F>],
    config: &CompressionConfig,
    mut progress: impl FnMut(&CompressProgress<'_>),
) -> Result<CompressedNetwork<F>> {
    if layers.is_empty() {
        return Err(Error::Empty {
            what: "the list of layers",
        });
    }
    if let ScalePrecision::Fixed(bits) = config.scales {
        if !(1..=32).contains(&bits) {
            return Err(Error::InvalidParameter {
                name: "ScalePrecision::Fixed bits",
                value: f64::from(bits),
                expected: "1 to 32 fractional bits",
            });
        }
    }
    let dims: Vec<_> = layers.iter().map(|l| l.weight.dim()).collect();
    let (plans, codebook_of) = config.plan_codebooks(&dims)?;
    let scale_mode = match config.scales {
        ScalePrecision::None => ScaleMode::None,
        _ => ScaleMode::L2Norm,
    };
    let mut codebooks = Vec::with_capacity(plans.len());
    let mut clustered: Vec<Option<ClusteredConv2d<F>>> = vec![None; layers.len()];
    for (c, plan) in plans.iter().enumerate() {
        let weights: Vec<_> = plan
            .layers
            .iter()
            .map(|&l| layers[l].weight.view())
            .collect();
        let any_mask = plan.layers.iter().any(|&l| layers[l].mask.is_some());
        let masks: Vec<Array2<bool>> = if any_mask {
            plan.layers
                .iter()
                .map(|&l| {
                    let (cout, cin, _, _) = layers[l].weight.dim();
                    layers[l]
                        .mask
                        .clone()
                        .unwrap_or_else(|| Array2::from_elem((cout, cin), true))
                })
                .collect()
        } else {
            Vec::new()
        };
        let mask_views: Vec<_> = masks.iter().map(|m| m.view()).collect();
        let fit = KernelCodebook::params(plan.k)
            .seed(config.seed)
            .n_init(config.n_init)
            .max_iter(config.max_iter)
            .tol(config.tol)
            .symmetry(config.symmetry)
            .scale_mode(scale_mode)
            .check()?
            .fit_masked_with_progress(&weights, &mask_views, |kmeans| {
                progress(&CompressProgress {
                    codebook: c,
                    codebooks: plans.len(),
                    layers: &plan.layers,
                    kmeans,
                });
            })?;
        for (&l, a) in plan.layers.iter().zip(fit.assignments) {
            let scales = a.scales.map(|s| s.mapv(|v| config.scales.round(v)));
            let layer = ClusteredConv2d::new(
                a.indices,
                scales,
                layers[l].bias.clone(),
                layers[l].geometry,
            )?;
            let layer = match &layers[l].mask {
                Some(mask) => layer.with_mask(mask.clone())?,
                None => layer,
            };
            // f16 scales are held as stored: 2 bytes per kernel in memory.
            clustered[l] = Some(if config.scales == ScalePrecision::F16 {
                layer.with_half_scales()?
            } else {
                layer
            });
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
    Ok(CompressedNetwork {
        codebooks,
        layers,
        scales: config.scales,
    })
}

//! [`CompressedNetwork`]: the codebooks, every layer, and the size report.

use ndarray::Array4;

use super::report;
use super::{CodebookPlan, CompressionReport, ConvLayer, LayerShape};
use crate::clustered::{ClusteredConv2d, LayerCost};
use crate::codebook::{Codebooks, ScaleScheme, Symmetry};
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::linalg::Real;

/// A layer of a [`CompressedNetwork`].
#[derive(Debug, Clone, PartialEq)]
pub enum CompressedLayer<F> {
    /// Clustered against codebook `codebook` of the network.
    Clustered {
        /// The layer's name.
        name: String,
        /// Id of its codebook in [`CompressedNetwork::codebooks`].
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

/// A compressed network: the codebooks and every layer, in the original order, checked to
/// agree when made ([`CompressedNetwork::new`]).
///
/// A network made by [`compress`](crate::compress) also remembers why each dense layer is
/// dense and the (K, error) points of an error budget
/// ([`CompressedNetwork::dense_reason`], [`CompressedNetwork::error_by_k`]); these notes are
/// not stored in files and not compared by `==`.
#[derive(Debug, Clone)]
pub struct CompressedNetwork<F> {
    codebooks: Codebooks<F>,
    layers: Vec<CompressedLayer<F>>,
    scale_scheme: ScaleScheme,
    /// Per layer: why it is dense, and the (K, relative error) points tried. Empty when
    /// unknown (e.g. a loaded file).
    notes: Vec<LayerNote>,
}

/// What [`compress`](crate::compress) knows of one layer beyond its weights.
pub(crate) type LayerNote = (Option<String>, Vec<(usize, f64)>);

impl<F: PartialEq> PartialEq for CompressedNetwork<F> {
    /// The codebooks, layers and scale scheme (not the notes of the compression).
    fn eq(&self, other: &Self) -> bool {
        self.codebooks == other.codebooks
            && self.layers == other.layers
            && self.scale_scheme == other.scale_scheme
    }
}

impl<F: Real> CompressedNetwork<F> {
    /// A network of `layers` over `codebooks`, whose scales are stored under `scale_scheme`.
    ///
    /// # Errors
    /// A clustered layer whose codebook id does not exist ([`Error::CodebookOutOfRange`]) or
    /// whose indices exceed its codebook ([`Error::IndexOutOfRange`]), or a codebook whose
    /// scale scheme differs from `scale_scheme` ([`Error::ScaleSchemeMismatch`]).
    pub fn new(
        codebooks: Codebooks<F>,
        layers: Vec<CompressedLayer<F>>,
        scale_scheme: ScaleScheme,
    ) -> Result<Self> {
        for layer in &layers {
            if let CompressedLayer::Clustered {
                codebook, layer, ..
            } = layer
            {
                layer.check_codebook(codebooks.get(*codebook)?)?;
            }
        }
        if let Some((c, cb)) = codebooks
            .iter()
            .enumerate()
            .find(|(_, cb)| cb.scale_scheme() != scale_scheme)
        {
            return Err(Error::ScaleSchemeMismatch {
                codebook: c,
                expected: scale_scheme.to_string(),
                got: cb.scale_scheme().to_string(),
            });
        }
        Ok(CompressedNetwork {
            codebooks,
            layers,
            scale_scheme,
            notes: Vec::new(),
        })
    }

    /// With one note per layer (made by the compressor).
    pub(crate) fn with_notes(mut self, notes: Vec<LayerNote>) -> Self {
        debug_assert_eq!(notes.len(), self.layers.len());
        self.notes = notes;
        self
    }

    /// Why layer `index` is dense, in words (e.g. ``matched pattern `layers.0` ``), when the
    /// network was made by [`compress`](crate::compress) (otherwise only 1×1 layers are
    /// known: `pointwise (1×1)`); `None` for a clustered layer, an unknown reason or an
    /// index out of range.
    pub fn dense_reason(&self, index: usize) -> Option<String> {
        match self.layers.get(index)? {
            CompressedLayer::Clustered { .. } => None,
            CompressedLayer::Dense { layer, .. } => match self.notes.get(index) {
                Some((reason, _)) => reason.clone(),
                None => {
                    let (kh, kw) = layer.kernel_size();
                    (kh * kw == 1).then(|| "pointwise (1×1)".to_string())
                }
            },
        }
    }

    /// The (K, relative error) points an error budget
    /// ([`CompressionConfig::max_error`](crate::CompressionConfig::max_error)) tried for
    /// layer `index`, in ascending K; empty without a budget, for a layer not searched, or
    /// for a network not made by [`compress`](crate::compress).
    pub fn error_by_k(&self, index: usize) -> &[(usize, f64)] {
        self.notes.get(index).map_or(&[], |(_, points)| points)
    }

    /// The codebooks.
    pub fn codebooks(&self) -> &Codebooks<F> {
        &self.codebooks
    }

    /// The codebooks, for fine-tuning their centroids ([`Codebooks::set_centroids`]).
    pub fn codebooks_mut(&mut self) -> &mut Codebooks<F> {
        &mut self.codebooks
    }

    /// The layers, in the order given to [`compress`](crate::compress).
    pub fn layers(&self) -> &[CompressedLayer<F>] {
        &self.layers
    }

    /// How the scales are stored (every codebook has this scheme).
    pub fn scale_scheme(&self) -> ScaleScheme {
        self.scale_scheme
    }

    /// The codebooks, the layers and the scale scheme (to rebuild with
    /// [`CompressedNetwork::new`]; the notes of the compression are dropped).
    pub fn into_parts(self) -> (Codebooks<F>, Vec<CompressedLayer<F>>, ScaleScheme) {
        (self.codebooks, self.layers, self.scale_scheme)
    }

    /// The dense equivalent of layer `index`.
    ///
    /// # Errors
    /// [`Error::LayerOutOfRange`] for an index out of range.
    pub fn dense_layer(&self, index: usize) -> Result<Conv2d<F>> {
        match self.layers.get(index) {
            Some(CompressedLayer::Clustered {
                codebook, layer, ..
            }) => layer.to_conv(self.codebooks.get(*codebook)?),
            Some(CompressedLayer::Dense { layer, .. }) => Ok(layer.clone()),
            None => Err(Error::LayerOutOfRange {
                layer: index,
                layers: self.layers.len(),
            }),
        }
    }

    /// Rounds every clustered layer's scales to [`CompressedNetwork::scale_scheme`]'s
    /// storage, so the network can be saved exactly (e.g. after rebuilding it with
    /// fine-tuned layers). With f16 storage the layers then hold their scales as `f16`, 2
    /// bytes per kernel ([`ClusteredConv2d::with_half_scales`]), as
    /// [`compress`](crate::compress) and a loaded file do.
    ///
    /// # Errors
    /// A scale that rounds to infinity (beyond the f16 range).
    pub fn round_scales(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            if let CompressedLayer::Clustered { layer, .. } = layer {
                layer.round_scales_to(self.scale_scheme)?;
            }
        }
        Ok(())
    }

    /// The size report: [`ReportBuilder::build`] alone reports the network (sizes and each
    /// clustered layer's index entropy); [`ReportBuilder::against`] adds each layer's
    /// relative reconstruction error against the original weights, and
    /// [`ReportBuilder::input_sizes`] FLOP counts.
    pub fn report(&self) -> ReportBuilder<'_, F> {
        ReportBuilder {
            net: self,
            original: None,
            input_hw: None,
        }
    }
}

/// Options of a [`CompressionReport`] of a [`CompressedNetwork`]; made by
/// [`CompressedNetwork::report`].
#[derive(Debug, Clone, Copy)]
pub struct ReportBuilder<'a, F> {
    net: &'a CompressedNetwork<F>,
    original: Option<&'a [ConvLayer<F>]>,
    input_hw: Option<&'a [(usize, usize)]>,
}

impl<'a, F: Real> ReportBuilder<'a, F> {
    /// Measure each layer's relative reconstruction error `‖W − Ŵ‖ / ‖W‖` against the
    /// original layers.
    #[must_use]
    pub fn against(mut self, original: &'a [ConvLayer<F>]) -> Self {
        self.original = Some(original);
        self
    }

    /// Each layer's input spatial size: adds dense MACs, the paper's FLOP count (§4.2) and
    /// the input side's real work per layer.
    #[must_use]
    pub fn input_sizes(mut self, input_hw: &'a [(usize, usize)]) -> Self {
        self.input_hw = Some(input_hw);
        self
    }

    /// The report.
    ///
    /// # Errors
    /// Original layers or input sizes that do not match the network's layers, or an
    /// inconsistent network.
    pub fn build(self) -> Result<CompressionReport> {
        let net = self.net;
        let n = net.layers.len();
        self.check_lengths()?;
        let mut shapes = Vec::with_capacity(n);
        let mut plans: Vec<CodebookPlan> = net
            .codebooks
            .iter()
            .map(|cb| CodebookPlan {
                kernel: cb.kernel_size(),
                k: cb.len(),
                layers: Vec::new(),
            })
            .collect();
        let mut codebook_of = vec![None; n];
        let mut measured = Vec::with_capacity(n);
        let mut mask_bits = vec![0u32; n];
        let mut costs = vec![None; n];
        for (l, layer) in net.layers.iter().enumerate() {
            let shape = self.shape(l)?;
            if let CompressedLayer::Clustered {
                codebook, layer, ..
            } = layer
            {
                mask_bits[l] = u32::from(layer.mask().is_some());
                codebook_of[l] = Some(*codebook);
                plans[*codebook].layers.push(l);
                let (m, cost) = self.measure(l, *codebook, layer, shape.input_hw)?;
                measured.push(Some(m));
                costs[l] = cost;
            } else {
                measured.push(None);
            }
            shapes.push(shape);
        }
        let symmetry = net
            .codebooks
            .iter()
            .next()
            .map_or(Symmetry::Identity, |c| c.symmetry());
        let settings = report::Settings {
            symmetry,
            scale_bits: net.scale_scheme.bits(),
        };
        let reasons: Vec<_> = (0..n).map(|l| net.dense_reason(l)).collect();
        let dense = report::Dense {
            mask_bits: &mask_bits,
            reasons: &reasons,
        };
        let mut report = report::from_plan(
            settings,
            &shapes,
            &plans,
            &codebook_of,
            Some(&measured),
            &dense,
        )?;
        for (l, (line, cost)) in report.layers.iter_mut().zip(costs).enumerate() {
            if let Some(cost) = cost {
                line.paper_flops = Some(cost.paper_flops);
                line.input_side_work = Some(cost.input_side.conv_macs + cost.input_side.adds);
            }
            line.error_by_k = net.error_by_k(l).to_vec();
        }
        Ok(report)
    }

    /// Original layers and input sizes, when given, have one entry per layer.
    fn check_lengths(&self) -> Result<()> {
        let n = self.net.layers.len();
        for (what, len) in [
            (
                "original layers vs compressed layers",
                self.original.map(<[_]>::len),
            ),
            ("input sizes vs layers", self.input_hw.map(<[_]>::len)),
        ] {
            if let Some(len) = len.filter(|&len| len != n) {
                return Err(Error::ShapeMismatch {
                    what,
                    expected: vec![n],
                    got: vec![len],
                });
            }
        }
        Ok(())
    }

    /// Clustered layer `l`'s index entropy, its error against the original (reconstructing
    /// its weight once, and only then) and its cost at `input_hw`.
    fn measure(
        &self,
        l: usize,
        codebook: usize,
        layer: &ClusteredConv2d<F>,
        input_hw: Option<(usize, usize)>,
    ) -> Result<(report::Measured, Option<LayerCost>)> {
        let cb = self.net.codebooks.get(codebook)?;
        let entropy_bits = cb
            .usage(&[layer.indices().to_array().view()])?
            .entropy_bits();
        let relative_error = match self.original {
            Some(original) => Some(relative_error(
                layer.to_conv(cb)?.weight(),
                &original[l].weight,
            )),
            None => None,
        };
        let cost = match input_hw {
            Some(hw) => Some(layer.cost(cb, hw)?),
            None => None,
        };
        let measured = report::Measured {
            relative_error,
            entropy_bits,
        };
        Ok((measured, cost))
    }

    /// Layer `l`'s shape as stored, checked against the original layer when given.
    fn shape(&self, l: usize) -> Result<LayerShape> {
        let net = self.net;
        let layer = &net.layers[l];
        let (weight, geometry) = match layer {
            CompressedLayer::Clustered {
                codebook, layer, ..
            } => {
                let (kh, kw) = net.codebooks.get(*codebook)?.kernel_size();
                (
                    (layer.out_channels(), layer.in_channels(), kh, kw),
                    layer.geometry(),
                )
            }
            CompressedLayer::Dense { layer, .. } => (layer.weight().dim(), layer.geometry()),
        };
        if let Some(orig) = self.original.map(|o| &o[l]) {
            if orig.weight.dim() != weight {
                let (o, i, kh, kw) = orig.weight.dim();
                return Err(Error::ShapeMismatch {
                    what: "original layer weight vs the compressed layer",
                    expected: vec![weight.0, weight.1, weight.2, weight.3],
                    got: vec![o, i, kh, kw],
                });
            }
        }
        Ok(LayerShape {
            name: layer.name().to_string(),
            weight,
            geometry,
            input_hw: self.input_hw.map(|hw| hw[l]),
        })
    }
}

/// `‖a − b‖ / ‖b‖` in `f64`.
pub(super) fn relative_error<F: Real>(a: &Array4<F>, b: &Array4<F>) -> f64 {
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

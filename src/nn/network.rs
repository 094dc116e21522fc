//! A sequential network of the stack's layers, with codebooks shared by its clustered layers.

use ndarray::{Array2, Array3, Array4, ArrayD, ArrayView2, ArrayView4, Ix2, Ix4, IxDyn};

use super::{
    relu, relu_backward, softmax_cross_entropy, BatchNorm2d, BatchNormCache, Linear, MaxPool2d,
    Sgd, SgdState,
};
use crate::clustered::ClusteredConv2d;
use crate::codebook::Codebooks;
use crate::compress::{compress, CompressedLayer, CompressionConfig, ConvLayer};
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::linalg::Real;

/// One layer of a [`Network`].
#[derive(Debug, Clone, PartialEq)]
pub enum Layer<F> {
    /// Dense convolution.
    Conv(Conv2d<F>),
    /// Clustered convolution over codebook `codebook` of [`Network::codebooks`] (an id that
    /// does not exist is an error in every pass).
    Clustered {
        /// The layer.
        layer: Box<ClusteredConv2d<F>>,
        /// Index of its codebook.
        codebook: usize,
    },
    /// Batch normalisation.
    BatchNorm(BatchNorm2d<F>),
    /// `max(x, 0)`.
    Relu,
    /// Max pooling.
    MaxPool(MaxPool2d),
    /// `(N, C, H, W)` → `(N, C·H·W)`.
    Flatten,
    /// Fully connected.
    Linear(Linear<F>),
}

/// A sequential network: images `(N, C, H, W)` in, logits `(N, classes)` out.
///
/// Training keeps index assignments frozen: a clustered layer learns its scales and bias, and
/// each codebook learns from the summed centroid gradients of every layer that shares it
/// (paper §3).
///
/// ```
/// use clustered_conv::nn::{Layer, Linear, Network, Sgd, SgdState, LrSchedule};
/// use clustered_conv::{Conv2d, ConvGeometry};
/// use ndarray::{Array1, Array2, Array4};
///
/// let conv = Conv2d::new(Array4::from_elem((2, 1, 3, 3), 0.1), None, ConvGeometry::default().padding(1, 1))?;
/// let fc = Linear { weight: Array2::from_elem((3, 2 * 4 * 4), 0.01), bias: Array1::zeros(3) };
/// let mut net = Network::new(vec![Layer::Conv(conv), Layer::Relu, Layer::Flatten, Layer::Linear(fc)]);
/// let x = Array4::from_shape_fn((4, 1, 4, 4), |(n, _, y, x)| (n + y * x) as f64 * 0.1);
/// let sgd = Sgd { lr: 0.1, momentum: 0.9, weight_decay: 0.0, schedule: LrSchedule::Constant };
/// let mut states: Vec<SgdState<f64>> = Vec::new();
/// let first = net.train_step(x.view(), &[0, 1, 2, 0], &sgd, 0, &mut states)?;
/// let second = net.train_step(x.view(), &[0, 1, 2, 0], &sgd, 0, &mut states)?;
/// assert!(second < first);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Network<F> {
    /// The layers, in order.
    pub layers: Vec<Layer<F>>,
    /// Codebooks of the clustered layers.
    pub codebooks: Codebooks<F>,
}

/// What a training forward pass keeps for the backward pass.
#[derive(Debug, Clone)]
pub struct Tape<F> {
    /// The input of every layer.
    inputs: Vec<ArrayD<F>>,
    /// Batch-norm caches, by layer.
    norms: Vec<Option<BatchNormCache<F>>>,
}

/// Gradients of one layer's parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerGrads<F> {
    /// A layer without parameters.
    None,
    /// Dense convolution: weight and bias.
    Conv(Array4<F>, Option<ndarray::Array1<F>>),
    /// Clustered convolution: scales and bias (centroids go to [`Gradients::codebooks`]).
    Clustered(Option<Array2<F>>, Option<ndarray::Array1<F>>),
    /// Batch norm: γ and β.
    BatchNorm(ndarray::Array1<F>, ndarray::Array1<F>),
    /// Linear: weight and bias.
    Linear(Array2<F>, ndarray::Array1<F>),
}

/// Gradients of a whole network.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<F> {
    /// Per layer.
    pub layers: Vec<LayerGrads<F>>,
    /// Per codebook: the sum over the layers that share it.
    pub codebooks: Vec<Array3<F>>,
    /// ∂L/∂input.
    pub input: Array4<F>,
}

impl<F: Real> Network<F> {
    /// A network without codebooks.
    pub fn new(layers: Vec<Layer<F>>) -> Self {
        Network {
            layers,
            codebooks: Codebooks::new(),
        }
    }

    /// Logits in evaluation mode (batch norm uses its running statistics).
    ///
    /// # Errors
    /// Shapes that do not chain (e.g. a `Linear` input size that is not `C·H·W`), or a
    /// network that does not end in a 2-D output.
    pub fn forward(&self, x: ArrayView4<F>) -> Result<Array2<F>> {
        let mut h = x.to_owned().into_dyn();
        for l in 0..self.layers.len() {
            h = self.layer_forward(l, &h)?;
        }
        Ok(view2(&h)?.to_owned())
    }

    /// Logits in training mode (batch statistics; running statistics updated), and the tape
    /// for [`Network::backward`].
    ///
    /// # Errors
    /// As [`Network::forward`].
    pub fn forward_train(&mut self, x: ArrayView4<F>) -> Result<(Array2<F>, Tape<F>)> {
        let mut h = x.to_owned().into_dyn();
        let mut tape = Tape {
            inputs: Vec::with_capacity(self.layers.len()),
            norms: Vec::with_capacity(self.layers.len()),
        };
        for l in 0..self.layers.len() {
            let out = if let Layer::BatchNorm(bn) = &mut self.layers[l] {
                let (y, cache) = bn.forward_train(view4(&h)?)?;
                tape.norms.push(Some(cache));
                y.into_dyn()
            } else {
                tape.norms.push(None);
                self.layer_forward(l, &h)?
            };
            tape.inputs.push(std::mem::replace(&mut h, out));
        }
        Ok((view2(&h)?.to_owned(), tape))
    }

    /// Layer `l`'s forward pass in evaluation mode.
    fn layer_forward(&self, l: usize, h: &ArrayD<F>) -> Result<ArrayD<F>> {
        Ok(match &self.layers[l] {
            Layer::Conv(c) => c.forward(view4(h)?)?.into_dyn(),
            Layer::Clustered { layer, codebook } => layer
                .forward(self.codebooks.get(*codebook)?, view4(h)?)?
                .into_dyn(),
            Layer::BatchNorm(bn) => bn.forward_eval(view4(h)?)?.into_dyn(),
            Layer::Relu => relu(h.view()),
            Layer::MaxPool(p) => p.forward(view4(h)?)?.into_dyn(),
            Layer::Flatten => {
                let n = h.shape()[0];
                let rest = h.len() / n.max(1);
                h.to_shape(IxDyn(&[n, rest]))
                    .map_err(|_| Error::ShapeMismatch {
                        what: "flatten input",
                        expected: vec![n, rest],
                        got: h.shape().to_vec(),
                    })?
                    .into_owned()
            }
            Layer::Linear(lin) => lin.forward(view2(h)?)?.into_dyn(),
        })
    }

    /// Gradients of every parameter given the tape and ∂L/∂logits.
    ///
    /// # Errors
    /// A tape from another network, or a gradient of the wrong shape.
    pub fn backward(&self, tape: &Tape<F>, grad_logits: Array2<F>) -> Result<Gradients<F>> {
        if tape.inputs.len() != self.layers.len() {
            return Err(Error::ShapeMismatch {
                what: "tape length vs layers",
                expected: vec![self.layers.len()],
                got: vec![tape.inputs.len()],
            });
        }
        let mut g = grad_logits.into_dyn();
        let mut layers = vec![LayerGrads::None; self.layers.len()];
        let mut codebooks: Vec<Array3<F>> = self
            .codebooks
            .iter()
            .map(|c| Array3::zeros(c.centroids().dim()))
            .collect();
        for (l, layer) in self.layers.iter().enumerate().rev() {
            let x = &tape.inputs[l];
            g = match layer {
                Layer::Conv(c) => {
                    let grads = c.backward(view4(x)?, view4(&g)?)?;
                    layers[l] = LayerGrads::Conv(grads.weight, grads.bias);
                    grads.input.into_dyn()
                }
                Layer::Clustered { layer, codebook } => {
                    let cb = self.codebooks.get(*codebook)?;
                    let grads = layer.backward(cb, view4(x)?, view4(&g)?)?;
                    // `get` checked the id; `codebooks` has one buffer per codebook.
                    grads.accumulate_centroids_into(&mut codebooks[*codebook])?;
                    layers[l] = LayerGrads::Clustered(grads.scales, grads.bias);
                    grads.input.into_dyn()
                }
                Layer::BatchNorm(bn) => {
                    let cache = tape.norms[l].as_ref().ok_or(Error::LayerMismatch {
                        what: "the tape",
                        layer: l,
                        expected: "a batch norm",
                        got: "no batch-norm cache (recorded by another network?)",
                    })?;
                    let grads = bn.backward(cache, view4(&g)?)?;
                    layers[l] = LayerGrads::BatchNorm(grads.gamma, grads.beta);
                    grads.input.into_dyn()
                }
                Layer::Relu => relu_backward(x.view(), g.view()),
                Layer::MaxPool(p) => p.backward(view4(x)?, view4(&g)?)?.into_dyn(),
                Layer::Flatten => {
                    let got = g.shape().to_vec();
                    g.into_shape_with_order(IxDyn(x.shape()))
                        .map_err(|_| Error::ShapeMismatch {
                            what: "flatten gradient vs its input",
                            expected: x.shape().to_vec(),
                            got,
                        })?
                }
                Layer::Linear(lin) => {
                    let grads = lin.backward(view2(x)?, view2(&g)?)?;
                    layers[l] = LayerGrads::Linear(grads.weight, grads.bias);
                    grads.input.into_dyn()
                }
            };
        }
        Ok(Gradients {
            layers,
            codebooks,
            input: view4(&g)?.to_owned(),
        })
    }

    /// Applies one SGD step to every parameter; `states` holds one momentum buffer per
    /// parameter (start with an empty vector).
    ///
    /// # Errors
    /// Gradients from another network.
    pub fn sgd_step(
        &mut self,
        grads: &Gradients<F>,
        sgd: &Sgd,
        epoch: usize,
        states: &mut Vec<SgdState<F>>,
    ) -> Result<()> {
        let mut param = 0;
        let mut step = |p: ndarray::ArrayViewMutD<F>, g: ndarray::ArrayViewD<F>| -> Result<()> {
            if states.len() <= param {
                states.push(SgdState::default());
            }
            sgd.step(epoch, p, g, &mut states[param])?;
            param += 1;
            Ok(())
        };
        if grads.layers.len() != self.layers.len() || grads.codebooks.len() != self.codebooks.len()
        {
            return Err(Error::ShapeMismatch {
                what: "gradients (layers, codebooks) vs the network's",
                expected: vec![self.layers.len(), self.codebooks.len()],
                got: vec![grads.layers.len(), grads.codebooks.len()],
            });
        }
        for (l, (layer, g)) in self.layers.iter_mut().zip(&grads.layers).enumerate() {
            match (layer, g) {
                (Layer::Conv(c), LayerGrads::Conv(gw, gb)) => {
                    let (w, b) = c.params_mut();
                    step(w.into_dyn(), gw.view().into_dyn())?;
                    if let (Some(b), Some(gb)) = (b, gb) {
                        step(b.into_dyn(), gb.view().into_dyn())?;
                    }
                }
                (Layer::Clustered { layer, .. }, LayerGrads::Clustered(gs, gb)) => {
                    // In place; f16-held scales become `F` (see `Network::round_scales`).
                    let (scales, bias) = layer.params_mut();
                    if let (Some(s), Some(gs)) = (scales, gs) {
                        step(s.view_mut().into_dyn(), gs.view().into_dyn())?;
                    }
                    if let (Some(b), Some(gb)) = (bias, gb) {
                        step(b.view_mut().into_dyn(), gb.view().into_dyn())?;
                    }
                    layer.check_updated_scales()?;
                }
                (Layer::BatchNorm(bn), LayerGrads::BatchNorm(gg, gb)) => {
                    step(bn.gamma.view_mut().into_dyn(), gg.view().into_dyn())?;
                    step(bn.beta.view_mut().into_dyn(), gb.view().into_dyn())?;
                }
                (Layer::Linear(lin), LayerGrads::Linear(gw, gb)) => {
                    step(lin.weight.view_mut().into_dyn(), gw.view().into_dyn())?;
                    step(lin.bias.view_mut().into_dyn(), gb.view().into_dyn())?;
                }
                (Layer::Relu | Layer::MaxPool(_) | Layer::Flatten, LayerGrads::None) => {}
                (layer, g) => {
                    return Err(Error::LayerMismatch {
                        what: "the gradients",
                        layer: l,
                        expected: layer.kind(),
                        got: g.kind(),
                    })
                }
            }
        }
        for (c, g) in grads.codebooks.iter().enumerate() {
            let mut centroids = self.codebooks.get(c)?.centroids().clone();
            step(centroids.view_mut().into_dyn(), g.view().into_dyn())?;
            self.codebooks.set_centroids(c, centroids)?;
        }
        Ok(())
    }

    /// Forward, softmax cross-entropy, backward and one SGD step; returns the batch loss.
    ///
    /// # Errors
    /// As the steps it runs.
    pub fn train_step(
        &mut self,
        x: ArrayView4<F>,
        labels: &[usize],
        sgd: &Sgd,
        epoch: usize,
        states: &mut Vec<SgdState<F>>,
    ) -> Result<f64> {
        let (logits, tape) = self.forward_train(x)?;
        let (loss, grad) = softmax_cross_entropy(logits.view(), labels)?;
        let grads = self.backward(&tape, grad)?;
        self.sgd_step(&grads, sgd, epoch, states)?;
        Ok(loss)
    }

    /// Re-estimates every batch-norm layer's running statistics as the plain average over
    /// `batches` of the batch statistics (training-mode forward passes; no parameter changes).
    /// After clustering, the convolutions' outputs no longer match the statistics the dense
    /// network collected, which is what collapses accuracy right after compression; a few
    /// hundred images fix most of it before any fine-tuning.
    ///
    /// # Errors
    /// As [`Network::forward_train`]; an empty `batches` is [`Error::Empty`].
    pub fn recalibrate_batch_norm<'a>(
        &mut self,
        batches: impl IntoIterator<Item = ArrayView4<'a, F>>,
    ) -> Result<()>
    where
        F: 'a,
    {
        let mut batches = batches.into_iter().peekable();
        if batches.peek().is_none() {
            return Err(Error::Empty {
                what: "the batches for batch-norm recalibration",
            });
        }
        // Kept to restore on failure, so an error leaves the network as it was.
        let saved: Vec<Option<BatchNorm2d<F>>> = self
            .layers
            .iter_mut()
            .map(|layer| match layer {
                Layer::BatchNorm(bn) => {
                    let old = bn.clone();
                    bn.running_mean.fill(F::zero());
                    bn.running_var.fill(F::zero());
                    Some(old)
                }
                _ => None,
            })
            .collect();
        let mut result = Ok(());
        for (seen, x) in batches.enumerate() {
            // Momentum 1/(t+1) makes the running value the mean of the t+1 batch values.
            let momentum = F::one() / F::from_f64_lossy((seen + 1) as f64);
            for layer in &mut self.layers {
                if let Layer::BatchNorm(bn) = layer {
                    bn.momentum = momentum;
                }
            }
            if let Err(e) = self.forward_train(x) {
                result = Err(e);
                break;
            }
        }
        for (layer, old) in self.layers.iter_mut().zip(saved) {
            if let (Layer::BatchNorm(bn), Some(old)) = (layer, old) {
                if result.is_err() {
                    *bn = old;
                } else {
                    bn.momentum = old.momentum;
                }
            }
        }
        result
    }

    /// Rounds every clustered layer's scales to the storage of its codebook's
    /// [`ScaleScheme`](crate::ScaleScheme) (fine-tuning moves them off the storage grid, and
    /// [`Network::sgd_step`] holds updated f16 scales as `F`; round before evaluating, so the
    /// measured model is the stored one). With f16 storage the layers then hold their scales
    /// as `f16` again
    /// ([`ClusteredConv2d::with_half_scales`](crate::ClusteredConv2d::with_half_scales)).
    ///
    /// # Errors
    /// A codebook id that does not exist, or a scale that rounds to infinity.
    pub fn round_scales(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            if let Layer::Clustered { layer, codebook } = layer {
                layer.round_scales_to(self.codebooks.get(*codebook)?.scale_scheme())?;
            }
        }
        Ok(())
    }

    /// Fraction of `labels` predicted correctly (arg-max of the logits, ties to the lower
    /// class), evaluated in batches of `batch` images.
    ///
    /// # Errors
    /// As [`Network::forward`], a label count that differs from the images', or `batch = 0`.
    pub fn accuracy(&self, images: ArrayView4<F>, labels: &[usize], batch: usize) -> Result<f64> {
        let n = images.dim().0;
        if labels.len() != n || batch == 0 {
            return Err(Error::ShapeMismatch {
                what: "labels (and batch ≥ 1) vs images",
                expected: vec![n],
                got: vec![labels.len(), batch],
            });
        }
        let mut correct = 0usize;
        for start in (0..n).step_by(batch) {
            let end = (start + batch).min(n);
            let logits = self.forward(images.slice_axis(ndarray::Axis(0), (start..end).into()))?;
            for (row, &label) in logits.outer_iter().zip(&labels[start..end]) {
                let pred = row
                    .iter()
                    .enumerate()
                    .fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
                correct += usize::from(pred == label);
            }
        }
        Ok(correct as f64 / n.max(1) as f64)
    }

    /// A copy with every dense convolution with a kernel larger than 1×1 clustered by
    /// [`compress`] under `config` (layers named `layers.<index>`); the original codebooks
    /// and clustered layers are kept.
    ///
    /// # Errors
    /// As [`compress`]; a network without dense convolutions to cluster.
    pub fn compress(&self, config: &CompressionConfig) -> Result<Network<F>> {
        self.compress_where(config, |_, _| true)
    }

    /// As [`Network::compress`], clustering only the convolutions (layer index, layer) for
    /// which `select` is true — e.g. leaving the first layer dense, whose few kernels cost
    /// little to store and matter most.
    ///
    /// # Errors
    /// As [`Network::compress`].
    pub fn compress_where(
        &self,
        config: &CompressionConfig,
        select: impl Fn(usize, &Conv2d<F>) -> bool,
    ) -> Result<Network<F>> {
        let convs: Vec<(usize, ConvLayer<F>)> = self
            .layers
            .iter()
            .enumerate()
            .filter_map(|(l, layer)| match layer {
                Layer::Conv(c) if c.kernel_size().0 * c.kernel_size().1 > 1 && select(l, c) => {
                    Some((
                        l,
                        ConvLayer {
                            name: format!("layers.{l}"),
                            weight: c.weight().clone(),
                            bias: c.bias().cloned(),
                            geometry: c.geometry(),
                            mask: None,
                        },
                    ))
                }
                _ => None,
            })
            .collect();
        let originals: Vec<ConvLayer<F>> = convs.iter().map(|(_, c)| c.clone()).collect();
        let (codebooks, layers, _) = compress(&originals, config)?.into_parts();
        let mut out = self.clone();
        let offset = out.codebooks.append(codebooks);
        for ((l, _), compressed) in convs.iter().zip(layers) {
            if let CompressedLayer::Clustered {
                codebook, layer, ..
            } = compressed
            {
                out.layers[*l] = Layer::Clustered {
                    layer,
                    codebook: offset + codebook,
                };
            }
        }
        Ok(out)
    }
}

impl<F> Layer<F> {
    /// The layer's kind, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Layer::Conv(_) => "a convolution",
            Layer::Clustered { .. } => "a clustered convolution",
            Layer::BatchNorm(_) => "a batch norm",
            Layer::Relu => "a ReLU",
            Layer::MaxPool(_) => "a max pool",
            Layer::Flatten => "a flatten",
            Layer::Linear(_) => "a linear layer",
        }
    }
}

impl<F> LayerGrads<F> {
    /// The kind of layer these gradients are for, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            LayerGrads::None => "gradients of a layer without parameters",
            LayerGrads::Conv(..) => "convolution gradients",
            LayerGrads::Clustered(..) => "clustered convolution gradients",
            LayerGrads::BatchNorm(..) => "batch-norm gradients",
            LayerGrads::Linear(..) => "linear gradients",
        }
    }
}

fn view4<F: Real>(h: &ArrayD<F>) -> Result<ArrayView4<'_, F>> {
    h.view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| Error::ShapeMismatch {
            what: "activation (expected N, C, H, W)",
            expected: vec![4],
            got: h.shape().to_vec(),
        })
}

fn view2<F: Real>(h: &ArrayD<F>) -> Result<ArrayView2<'_, F>> {
    h.view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::ShapeMismatch {
            what: "activation (expected N, features)",
            expected: vec![2],
            got: h.shape().to_vec(),
        })
}

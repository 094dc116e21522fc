//! A sequential network of the stack's layers, with codebooks shared by its clustered layers.

use ndarray::{Array2, Array3, Array4, ArrayD, ArrayView2, ArrayView4, Ix2, Ix4, IxDyn};

use super::graph::{Arity, ValueGrads, Values, Wiring};
use super::optim::check_epoch;
use super::{
    relu, softmax_cross_entropy, AvgPool2d, BatchNorm2d, BatchNormTape, GlobalAvgPool, Linear,
    MaxPool2d, PoolArgmax, Sgd, SgdState,
};
use crate::clustered::ClusteredConv2d;
use crate::codebook::Codebooks;
use crate::compress::{compress, CompressedLayer, CompressedNetwork, CompressionConfig, ConvLayer};
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::linalg::Real;

/// One layer of a [`Network`]. New kinds of layers may be added (the enum is
/// `#[non_exhaustive]`): match with a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
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
    /// Average pooling.
    AvgPool(AvgPool2d),
    /// The mean of each channel: `(N, C, H, W)` → `(N, C, 1, 1)`.
    GlobalAvgPool,
    /// `(N, C, H, W)` → `(N, C·H·W)`.
    Flatten,
    /// Fully connected.
    Linear(Linear<F>),
    /// The element-wise sum of two or more inputs of one shape (a residual connection); only
    /// in a [`Network::graph`].
    Add,
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
/// let first = net.train_step(x.view(), &[0, 1, 2, 0], &sgd, 0.0, &mut states)?;
/// let second = net.train_step(x.view(), &[0, 1, 2, 0], &sgd, 0.0, &mut states)?;
/// assert!(second < first);
/// # Ok::<(), clustered_conv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Network<F> {
    /// The layers, in order.
    pub layers: Vec<Layer<F>>,
    /// Codebooks of the clustered layers.
    pub codebooks: Codebooks<F>,
    /// Where each layer reads from.
    wiring: Wiring,
}

/// What a training forward pass keeps for the backward pass: per layer, only what its
/// backward pass reads.
///
/// A batch norm followed by a ReLU runs as one fused layer (forward and backward): it keeps
/// its input and statistics, and the ReLU keeps nothing. A max pool keeps where each maximum
/// was (one or two bytes per output), not its input. A flatten keeps a shape.
#[derive(Debug, Clone)]
pub struct Tape<F> {
    /// One entry per layer.
    saved: Vec<Saved<F>>,
}

/// What one layer's training forward pass keeps.
#[derive(Debug, Clone)]
enum Saved<F> {
    /// The layer's input: convolutions, linear layers, a ReLU that follows no batch norm.
    Input(ArrayD<F>),
    /// A batch norm, fused with the ReLU after it when there is one.
    Norm(BatchNormTape<F>),
    /// A ReLU fused into the batch norm before it.
    Fused,
    /// A max pool: where each window's maximum was.
    Pool(PoolArgmax),
    /// A flatten: its input's shape.
    Shape(Vec<usize>),
    /// An average pool: its input's `(N, C, H, W)`.
    Dim((usize, usize, usize, usize)),
    /// An add (its backward pass needs nothing).
    Sum,
}

impl<F> Saved<F> {
    /// What was saved, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Saved::Input(_) => "a saved input (recorded by another network?)",
            Saved::Norm(_) => "a batch-norm record (recorded by another network?)",
            Saved::Fused => "a fused ReLU (recorded by another network?)",
            Saved::Pool(_) => "a max-pool argmax (recorded by another network?)",
            Saved::Shape(_) => "a flatten shape (recorded by another network?)",
            Saved::Sum => "an add record (recorded by another network?)",
            Saved::Dim(_) => "an average-pool input shape (recorded by another network?)",
        }
    }
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
            wiring: Wiring::chain(),
        }
    }

    /// A network whose layers form a directed acyclic graph, e.g. with residual connections.
    ///
    /// `inputs[l]` lists the values layer `l` reads: value 0 is the network's input and value
    /// `j + 1` the output of layer `j`, so a layer reads only what comes before it. A
    /// [`Layer::Add`] reads two or more values, every other layer exactly one. The last layer's
    /// output is the network's output, and every other layer's output must be read by a
    /// later layer.
    ///
    /// ```
    /// use clustered_conv::nn::{Layer, Network};
    /// use ndarray::Array4;
    ///
    /// // y = relu(x) + x
    /// let net = Network::<f64>::graph(vec![Layer::Relu, Layer::Add, Layer::Flatten], vec![vec![0], vec![1, 0], vec![2]])?;
    /// let x = Array4::from_shape_vec((1, 1, 1, 2), vec![-1.0, 2.0]).unwrap();
    /// assert_eq!(net.forward(x.view())?.into_raw_vec_and_offset().0, vec![-1.0, 4.0]);
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidGraph`] for an input count that differs from the layer count, a layer
    /// that reads a later value, the wrong number of inputs for its kind, or a layer whose
    /// output is never read.
    pub fn graph(layers: Vec<Layer<F>>, inputs: Vec<Vec<usize>>) -> Result<Self> {
        if inputs.len() != layers.len() {
            return Err(Error::InvalidGraph {
                what: format!("{} layers but inputs for {}", layers.len(), inputs.len()),
            });
        }
        let arity = |l: usize| match layers[l] {
            Layer::Add => Arity::Many,
            _ => Arity::One,
        };
        let wiring = Wiring::graph(inputs, arity)?;
        Ok(Network {
            layers,
            codebooks: Codebooks::new(),
            wiring,
        })
    }

    /// The values layer `l` reads (value 0 is the input, value `j + 1` the output of layer
    /// `j`); `[l]` for every layer of a chain.
    ///
    /// # Errors
    /// [`Error::LayerOutOfRange`] for a layer that does not exist.
    pub fn inputs_of(&self, l: usize) -> Result<Vec<usize>> {
        if l >= self.layers.len() {
            return Err(Error::LayerOutOfRange {
                layer: l,
                layers: self.layers.len(),
            });
        }
        Ok(self.wiring.sources(l))
    }

    /// Whether the layers form a plain chain (each reads the one before).
    pub fn is_chain(&self) -> bool {
        self.wiring.is_chain()
    }

    /// Logits in evaluation mode (batch norm uses its running statistics; a batch norm
    /// followed by a ReLU runs as one fused pass).
    ///
    /// # Errors
    /// Shapes that do not chain (e.g. a `Linear` input size that is not `C·H·W`, or an add of
    /// two shapes), or a network that does not end in a 2-D output.
    pub fn forward(&self, x: ArrayView4<F>) -> Result<Array2<F>> {
        let n = self.layers.len();
        self.wiring.check_len(n)?;
        let reads = self.wiring.reads(n);
        let mut values = Values::new(x.to_owned().into_dyn(), &self.wiring, n);
        let mut l = 0;
        while l < n {
            let fuse = self.fuses(l, &reads);
            let inputs = self.gather(l, &mut values)?;
            let out = self.layer_forward(l, inputs, fuse)?;
            l += 1 + usize::from(fuse);
            values.put(l, out);
        }
        into2(values.take(n)?)
    }

    /// Whether layer `l` is a batch norm whose output only a ReLU right after it reads (the
    /// two then run fused); `reads` is [`Wiring::reads`].
    fn fuses(&self, l: usize, reads: &[usize]) -> bool {
        matches!(
            (self.layers.get(l), self.layers.get(l + 1)),
            (Some(Layer::BatchNorm(_)), Some(Layer::Relu))
        ) && reads[l + 1] == 1
            && self.wiring.sources(l + 1) == [l + 1]
    }

    /// The inputs of layer `l`, taken from `values`.
    fn gather(&self, l: usize, values: &mut Values<F>) -> Result<Vec<ArrayD<F>>> {
        self.wiring
            .sources(l)
            .into_iter()
            .map(|v| values.take(v))
            .collect()
    }

    /// The output shape of every layer for input `x` (evaluation mode), or the first layer
    /// that fails and its error: the importers' shape check, which names the failing node.
    #[cfg_attr(not(feature = "onnx"), allow(dead_code))]
    pub(crate) fn output_shapes(
        &self,
        x: ArrayView4<F>,
    ) -> std::result::Result<Vec<Vec<usize>>, (usize, Error)> {
        let n = self.layers.len();
        self.wiring.check_len(n).map_err(|e| (0, e))?;
        let mut values = Values::new(x.to_owned().into_dyn(), &self.wiring, n);
        let mut shapes = Vec::with_capacity(n);
        for l in 0..n {
            let out = self
                .gather(l, &mut values)
                .and_then(|inputs| self.layer_forward(l, inputs, false))
                .map_err(|e| (l, e))?;
            shapes.push(out.shape().to_vec());
            values.put(l + 1, out);
        }
        Ok(shapes)
    }

    /// Logits in training mode (batch statistics; running statistics updated), and the tape
    /// for [`Network::backward`].
    ///
    /// # Errors
    /// As [`Network::forward`].
    pub fn forward_train(&mut self, x: ArrayView4<F>) -> Result<(Array2<F>, Tape<F>)> {
        let n = self.layers.len();
        self.wiring.check_len(n)?;
        let reads = self.wiring.reads(n);
        let mut values = Values::new(x.to_owned().into_dyn(), &self.wiring, n);
        let mut tape = Tape {
            saved: Vec::with_capacity(n),
        };
        while tape.saved.len() < n {
            let l = tape.saved.len();
            let fuse = self.fuses(l, &reads);
            let inputs = self.gather(l, &mut values)?;
            let (out, saved) = self.layer_forward_train(l, inputs, fuse)?;
            tape.saved.push(saved);
            if fuse {
                tape.saved.push(Saved::Fused);
            }
            values.put(tape.saved.len(), out);
        }
        Ok((into2(values.take(n)?)?, tape))
    }

    /// Layer `l`'s training forward pass (with the ReLU after it when `fuse`): its output
    /// and what its backward pass needs. Takes the inputs by value: a layer that needs its
    /// input keeps it without a copy.
    fn layer_forward_train(
        &mut self,
        l: usize,
        inputs: Vec<ArrayD<F>>,
        fuse: bool,
    ) -> Result<(ArrayD<F>, Saved<F>)> {
        if let Layer::Add = self.layers[l] {
            return Ok((sum(inputs)?, Saved::Sum));
        }
        let h = single(inputs)?;
        let codebooks = &self.codebooks;
        Ok(match &mut self.layers[l] {
            Layer::Conv(c) => (c.forward(view4(&h)?)?.into_dyn(), Saved::Input(h)),
            Layer::Clustered { layer, codebook } => {
                let y = layer.forward(codebooks.get(*codebook)?, view4(&h)?)?;
                (y.into_dyn(), Saved::Input(h))
            }
            Layer::BatchNorm(bn) => {
                let (y, tape) = bn.forward_train_fused(into4(h)?, fuse)?;
                (y.into_dyn(), Saved::Norm(tape))
            }
            Layer::Relu => (relu(h.view()), Saved::Input(h)),
            Layer::MaxPool(p) => {
                let (y, argmax) = p.forward_train(view4(&h)?)?;
                (y.into_dyn(), Saved::Pool(argmax))
            }
            Layer::AvgPool(p) => {
                let x = view4(&h)?;
                (p.forward(x)?.into_dyn(), Saved::Dim(x.dim()))
            }
            Layer::GlobalAvgPool => {
                let x = view4(&h)?;
                (GlobalAvgPool.forward(x)?.into_dyn(), Saved::Dim(x.dim()))
            }
            Layer::Flatten => {
                let shape = h.shape().to_vec();
                (flatten(h)?, Saved::Shape(shape))
            }
            Layer::Linear(lin) => (lin.forward(view2(&h)?)?.into_dyn(), Saved::Input(h)),
            Layer::Add => unreachable!("handled above"),
        })
    }

    /// Layer `l`'s forward pass in evaluation mode, with the ReLU after it when `fuse`.
    fn layer_forward(&self, l: usize, inputs: Vec<ArrayD<F>>, fuse: bool) -> Result<ArrayD<F>> {
        if let Layer::Add = self.layers[l] {
            return sum(inputs);
        }
        let h = single(inputs)?;
        Ok(match &self.layers[l] {
            Layer::Conv(c) => c.forward(view4(&h)?)?.into_dyn(),
            Layer::Clustered { layer, codebook } => layer
                .forward(self.codebooks.get(*codebook)?, view4(&h)?)?
                .into_dyn(),
            Layer::BatchNorm(bn) => bn.forward_eval_fused(view4(&h)?, fuse)?.into_dyn(),
            Layer::Relu => {
                let mut h = h;
                h.mapv_inplace(|v| if v > F::zero() { v } else { F::zero() });
                h
            }
            Layer::MaxPool(p) => p.forward(view4(&h)?)?.into_dyn(),
            Layer::AvgPool(p) => p.forward(view4(&h)?)?.into_dyn(),
            Layer::GlobalAvgPool => GlobalAvgPool.forward(view4(&h)?)?.into_dyn(),
            Layer::Flatten => flatten(h)?,
            Layer::Linear(lin) => lin.forward(view2(&h)?)?.into_dyn(),
            Layer::Add => unreachable!("handled above"),
        })
    }

    /// Gradients of every parameter given the tape and ∂L/∂logits.
    ///
    /// # Errors
    /// A tape from another network, or a gradient of the wrong shape.
    pub fn backward(&self, tape: &Tape<F>, grad_logits: Array2<F>) -> Result<Gradients<F>> {
        let n = self.layers.len();
        self.wiring.check_len(n)?;
        if tape.saved.len() != n {
            return Err(Error::ShapeMismatch {
                what: "tape length vs layers",
                expected: vec![n],
                got: vec![tape.saved.len()],
            });
        }
        let mut values = ValueGrads::new(n + 1);
        values.add(n, grad_logits.into_dyn())?;
        let mut layers = vec![LayerGrads::None; n];
        let mut codebooks: Vec<Array3<F>> = self
            .codebooks
            .iter()
            .map(|c| Array3::zeros(c.centroids().dim()))
            .collect();
        for l in (0..n).rev() {
            let g = values.take(l + 1)?;
            let sources = self.wiring.sources(l);
            if let (Layer::Add, Saved::Sum) = (&self.layers[l], &tape.saved[l]) {
                // Each summand receives the whole gradient.
                for &v in &sources[1..] {
                    values.add(v, g.clone())?;
                }
                values.add(sources[0], g)?;
                continue;
            }
            let g = self.layer_backward(l, &tape.saved[l], g, &mut layers[l], &mut codebooks)?;
            values.add(sources[0], g)?;
        }
        Ok(Gradients {
            layers,
            codebooks,
            input: into4(values.take(0)?)?,
        })
    }

    /// Layer `l`'s backward pass: ∂L/∂input from ∂L/∂output `g` (owned: batch norm and ReLU
    /// work in place on it), the layer's parameter gradients into `grads`, centroid
    /// gradients added to `codebooks`.
    fn layer_backward(
        &self,
        l: usize,
        saved: &Saved<F>,
        mut g: ArrayD<F>,
        grads: &mut LayerGrads<F>,
        codebooks: &mut [Array3<F>],
    ) -> Result<ArrayD<F>> {
        Ok(match (&self.layers[l], saved) {
            (Layer::Conv(c), Saved::Input(x)) => {
                let out = c.backward(view4(x)?, view4(&g)?)?;
                *grads = LayerGrads::Conv(out.weight, out.bias);
                out.input.into_dyn()
            }
            (Layer::Clustered { layer, codebook }, Saved::Input(x)) => {
                let cb = self.codebooks.get(*codebook)?;
                let out = layer.backward(cb, view4(x)?, view4(&g)?)?;
                // `get` checked the id; `codebooks` has one buffer per codebook.
                out.accumulate_centroids_into(&mut codebooks[*codebook])?;
                *grads = LayerGrads::Clustered(out.scales, out.bias);
                out.input.into_dyn()
            }
            (Layer::BatchNorm(bn), Saved::Norm(tape)) => {
                let out = bn.backward_fused(tape, into4(g)?)?;
                *grads = LayerGrads::BatchNorm(out.gamma, out.beta);
                out.input.into_dyn()
            }
            // The batch norm before it applies the ReLU's mask.
            (Layer::Relu, Saved::Fused)
                if l > 0 && matches!(self.layers[l - 1], Layer::BatchNorm(_)) =>
            {
                g
            }
            (Layer::Relu, Saved::Input(x)) => {
                relu_backward_in_place(x, &mut g)?;
                g
            }
            (Layer::MaxPool(p), Saved::Pool(argmax)) => {
                p.backward_argmax(argmax, view4(&g)?)?.into_dyn()
            }
            (Layer::AvgPool(p), Saved::Dim(dim)) => p.backward(*dim, view4(&g)?)?.into_dyn(),
            (Layer::GlobalAvgPool, Saved::Dim(dim)) => {
                GlobalAvgPool.backward(*dim, view4(&g)?)?.into_dyn()
            }
            (Layer::Flatten, Saved::Shape(shape)) => {
                let got = g.shape().to_vec();
                g.into_shape_with_order(IxDyn(shape))
                    .map_err(|_| Error::ShapeMismatch {
                        what: "flatten gradient vs its input",
                        expected: shape.clone(),
                        got,
                    })?
            }
            (Layer::Linear(lin), Saved::Input(x)) => {
                let out = lin.backward(view2(x)?, view2(&g)?)?;
                *grads = LayerGrads::Linear(out.weight, out.bias);
                out.input.into_dyn()
            }
            (layer, saved) => {
                return Err(Error::LayerMismatch {
                    what: "the tape",
                    layer: l,
                    expected: layer.kind(),
                    got: saved.kind(),
                })
            }
        })
    }

    /// Applies one SGD step to every parameter at training position `epoch` (in epochs; see
    /// [`Sgd::lr_at`]); `states` holds one momentum buffer per parameter (start with an empty
    /// vector).
    ///
    /// # Errors
    /// Gradients from another network; an `epoch` that is negative or not finite; settings
    /// that [`Sgd::check`] refuses. Nothing changes on these errors.
    pub fn sgd_step(
        &mut self,
        grads: &Gradients<F>,
        sgd: &Sgd,
        epoch: f64,
        states: &mut Vec<SgdState<F>>,
    ) -> Result<()> {
        check_epoch(epoch)?;
        sgd.check()?;
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
                (
                    Layer::Relu
                    | Layer::MaxPool(_)
                    | Layer::AvgPool(_)
                    | Layer::GlobalAvgPool
                    | Layer::Flatten
                    | Layer::Add,
                    LayerGrads::None,
                ) => {}
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

    /// Forward, softmax cross-entropy, backward and one SGD step at training position `epoch`
    /// (in epochs: `e + b / batches` before batch `b` of epoch `e` for a learning rate that
    /// changes every step, see [`Sgd::lr_at`]); returns the batch loss.
    ///
    /// # Errors
    /// As the steps it runs; an `epoch` that is negative or not finite is refused before the
    /// forward pass, so batch-norm statistics stay as they were.
    pub fn train_step(
        &mut self,
        x: ArrayView4<F>,
        labels: &[usize],
        sgd: &Sgd,
        epoch: f64,
        states: &mut Vec<SgdState<F>>,
    ) -> Result<f64> {
        check_epoch(epoch)?;
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
        let (chosen, convs) = self.convolutions_to_cluster(select);
        Ok(self.with_clustered(&chosen, compress(&convs, config)?))
    }

    /// The dense convolutions with a kernel larger than 1×1 for which `select` is true: their
    /// layer indices, and each as a [`ConvLayer`] named `layers.<index>`.
    pub(super) fn convolutions_to_cluster(
        &self,
        select: impl Fn(usize, &Conv2d<F>) -> bool,
    ) -> (Vec<usize>, Vec<ConvLayer<F>>) {
        self.layers
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
            .unzip()
    }

    /// The dense convolutions with a kernel larger than 1×1, named `names[l]` (e.g. the ONNX
    /// node names of [`OnnxModel::layer_names`](crate::io::OnnxModel::layer_names), which
    /// name patterns then match): their layer indices, and each as a [`ConvLayer`] to give to
    /// [`compress`] or [`CompressionConfig::compressor`] (for progress). Put the result back
    /// with [`Network::with_clustered`].
    ///
    /// ```
    /// use clustered_conv::nn::{Layer, Network};
    /// use clustered_conv::{compress, CompressionConfig, Conv2d, ConvGeometry, KernelCodebook};
    /// use ndarray::Array4;
    ///
    /// let conv = |seed: usize| Conv2d::new(Array4::from_shape_fn((4, 4, 3, 3), |(o, i, r, c)| ((seed + o * 7 + i * 3 + r * 2 + c) % 5) as f32 - 2.0), None, ConvGeometry::default().padding(1, 1));
    /// let net = Network::new(vec![Layer::Conv(conv(0)?), Layer::Relu, Layer::Conv(conv(1)?)]);
    /// let names = ["a", "relu", "b"].map(String::from);
    /// let (chosen, convs) = net.named_convolutions(&names)?;
    /// assert_eq!((chosen, convs[1].name.as_str()), (vec![0, 2], "b"));
    /// let compressed = compress(&convs, &CompressionConfig::new(KernelCodebook::params(4)))?;
    /// let report = compressed.report().against(&convs).build()?;
    /// let clustered = net.with_clustered(&[0, 2], compressed);
    /// assert!(matches!(clustered.layers[2], Layer::Clustered { .. }));
    /// assert_eq!(report.layers[1].name, "b");
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidModel`] for a name count that differs from the layer count.
    pub fn named_convolutions(&self, names: &[String]) -> Result<(Vec<usize>, Vec<ConvLayer<F>>)> {
        if names.len() != self.layers.len() {
            return Err(Error::InvalidModel {
                what: format!("{} names for {} layers", names.len(), self.layers.len()),
            });
        }
        let (chosen, mut convs) = self.convolutions_to_cluster(|_, _| true);
        for (conv, &l) in convs.iter_mut().zip(&chosen) {
            conv.name.clone_from(&names[l]);
        }
        Ok((chosen, convs))
    }

    /// A copy with layer `chosen[j]` replaced by the `j`-th layer of `compressed` where that
    /// is clustered (a layer that compression left dense stays as it was); the codebooks of
    /// `compressed` are appended to the copy's.
    pub fn with_clustered(&self, chosen: &[usize], compressed: CompressedNetwork<F>) -> Network<F> {
        let (codebooks, layers, _) = compressed.into_parts();
        let mut out = self.clone();
        let offset = out.codebooks.append(codebooks);
        for (&l, compressed) in chosen.iter().zip(layers) {
            if let CompressedLayer::Clustered {
                codebook, layer, ..
            } = compressed
            {
                out.layers[l] = Layer::Clustered {
                    layer,
                    codebook: offset + codebook,
                };
            }
        }
        out
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
            Layer::AvgPool(_) => "an average pool",
            Layer::GlobalAvgPool => "a global average pool",
            Layer::Flatten => "a flatten",
            Layer::Linear(_) => "a linear layer",
            Layer::Add => "an add",
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

/// The one input of a single-input layer.
fn single<F>(inputs: Vec<ArrayD<F>>) -> Result<ArrayD<F>> {
    let got = inputs.len();
    let mut inputs = inputs.into_iter();
    match (inputs.next(), inputs.next()) {
        (Some(h), None) => Ok(h),
        _ => Err(Error::InvalidGraph {
            what: format!("a single-input layer was given {got} inputs"),
        }),
    }
}

/// The element-wise sum of `inputs`, which must all have one shape (no broadcasting).
fn sum<F: Real>(inputs: Vec<ArrayD<F>>) -> Result<ArrayD<F>> {
    let mut inputs = inputs.into_iter();
    let mut total = inputs.next().ok_or_else(|| Error::InvalidGraph {
        what: "an add was given no inputs".into(),
    })?;
    for x in inputs {
        if x.shape() != total.shape() {
            return Err(Error::ShapeMismatch {
                what: "add inputs (every summand must have the same shape)",
                expected: total.shape().to_vec(),
                got: x.shape().to_vec(),
            });
        }
        total += &x;
    }
    Ok(total)
}

/// `h` as `(N, C, H, W)`.
fn view4<F: Real>(h: &ArrayD<F>) -> Result<ArrayView4<'_, F>> {
    h.view()
        .into_dimensionality::<Ix4>()
        .map_err(|_| Error::ShapeMismatch {
            what: "activation (expected N, C, H, W)",
            expected: vec![4],
            got: h.shape().to_vec(),
        })
}

/// `h` as `(N, features)`.
fn view2<F: Real>(h: &ArrayD<F>) -> Result<ArrayView2<'_, F>> {
    h.view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::ShapeMismatch {
            what: "activation (expected N, features)",
            expected: vec![2],
            got: h.shape().to_vec(),
        })
}

/// `h` as an owned `(N, C, H, W)` array, without a copy.
fn into4<F: Real>(h: ArrayD<F>) -> Result<Array4<F>> {
    let got = h.shape().to_vec();
    h.into_dimensionality::<Ix4>()
        .map_err(|_| Error::ShapeMismatch {
            what: "activation (expected N, C, H, W)",
            expected: vec![4],
            got,
        })
}

/// `h` as an owned `(N, features)` array, without a copy.
fn into2<F: Real>(h: ArrayD<F>) -> Result<Array2<F>> {
    let got = h.shape().to_vec();
    h.into_dimensionality::<Ix2>()
        .map_err(|_| Error::ShapeMismatch {
            what: "activation (expected N, features)",
            expected: vec![2],
            got,
        })
}

/// `(N, …)` → `(N, rest)`: a reshape of the same buffer when it is in standard layout (every
/// layer's output is), else a copy.
fn flatten<F: Real>(h: ArrayD<F>) -> Result<ArrayD<F>> {
    let n = h.shape().first().copied().unwrap_or(0);
    let rest = h.len() / n.max(1);
    let h = if h.is_standard_layout() {
        h
    } else {
        h.as_standard_layout().into_owned()
    };
    let got = h.shape().to_vec();
    h.into_shape_with_order(IxDyn(&[n, rest]))
        .map_err(|_| Error::ShapeMismatch {
            what: "flatten input",
            expected: vec![n, rest],
            got,
        })
}

/// [`relu_backward`](super::relu_backward) in place: `g` zeroed where `x ≤ 0`.
fn relu_backward_in_place<F: Real>(x: &ArrayD<F>, g: &mut ArrayD<F>) -> Result<()> {
    if x.shape() != g.shape() {
        return Err(Error::ShapeMismatch {
            what: "ReLU gradient vs its input",
            expected: x.shape().to_vec(),
            got: g.shape().to_vec(),
        });
    }
    g.zip_mut_with(x, |g, &v| {
        if v <= F::zero() {
            *g = F::zero();
        }
    });
    Ok(())
}

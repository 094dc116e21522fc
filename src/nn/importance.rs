//! Per-kernel importance from data: the squared loss gradient of every convolution kernel
//! (a diagonal Fisher / gradient-squared estimate of the loss's curvature), for weighting
//! kernels when they are clustered.

use ndarray::{Array2, ArrayView2, ArrayView4, Axis};

use super::{softmax_cross_entropy, Layer, LayerGrads, Network};
use crate::compress::CompressionConfig;
use crate::conv::Conv2d;
use crate::error::{Error, Result};
use crate::linalg::Real;

impl<F: Real> Network<F> {
    /// The importance of every kernel of every dense or clustered convolution: for kernel
    /// `(o, i)` of layer `l`, the mean over `batches` of `Σ_taps (∂L/∂w[o, i, ·, ·])²`, where
    /// `L` is the batch's mean softmax cross-entropy and `w` the layer's (effective) dense
    /// weight. This is the gradient-squared stand-in for the Hessian's diagonal of Choi,
    /// El-Khamy & Lee (2017, "Towards the limit of network quantization"): to second order,
    /// moving a kernel by `δ` costs about `½·Σ_taps h·δ²` of loss, so kernels with large
    /// values should be clustered with small error (see
    /// [`CodebookFitter::importance`](crate::CodebookFitter::importance)). With one image
    /// per batch it is the diagonal of the empirical Fisher information; larger batches
    /// square the batch-mean gradient instead, which is cheaper and gives smaller values
    /// (the per-image noise partly averages out).
    ///
    /// Gradients come from [`Network::forward_train`] and [`Network::backward`] on a copy of
    /// the network in which every clustered layer is replaced by its dense equivalent
    /// ([`ClusteredConv2d::to_conv`](crate::ClusteredConv2d::to_conv)), so `self` is not
    /// changed (batch-norm running statistics included); batch norm uses batch statistics,
    /// as in training.
    ///
    /// Returns one entry per layer of [`Network::layers`]: `Some((Cout, Cin))` for
    /// convolutions (dense or clustered), `None` for every other layer.
    ///
    /// # Errors
    /// [`Error::Empty`] for no batches; otherwise as [`Network::forward_train`],
    /// [`softmax_cross_entropy`] and [`Network::backward`] (e.g. a label count that differs
    /// from a batch's images), or a clustered layer whose codebook does not exist.
    ///
    /// # Determinism
    /// Summed in `f64`, batch by batch in the order given: bit-identical for the same
    /// batches on any number of threads.
    ///
    /// ```
    /// use clustered_conv::nn::{Layer, Linear, Network};
    /// use clustered_conv::{Conv2d, ConvGeometry};
    /// use ndarray::{Array1, Array2, Array4};
    ///
    /// let conv = Conv2d::new(Array4::from_shape_fn((2, 1, 3, 3), |(o, _, r, c)| (o + r + 2 * c) as f64 * 0.05), None, ConvGeometry::default().padding(1, 1))?;
    /// let fc = Linear { weight: Array2::from_shape_fn((3, 2 * 4 * 4), |(a, b)| ((a * 7 + b) % 5) as f64 * 0.02 - 0.04), bias: Array1::zeros(3) };
    /// let net = Network::new(vec![Layer::Conv(conv), Layer::Relu, Layer::Flatten, Layer::Linear(fc)]);
    /// let x = Array4::from_shape_fn((4, 1, 4, 4), |(n, _, y, x)| (n + y * x) as f64 * 0.1);
    /// let labels = [0, 1, 2, 0];
    /// let importance = net.kernel_importance([(x.view(), &labels[..])])?;
    /// assert_eq!(importance.len(), 4);
    /// let conv = importance[0].as_ref().unwrap();
    /// assert_eq!(conv.dim(), (2, 1));
    /// assert!(conv.iter().all(|&v| v > 0.0));
    /// assert!(importance[3].is_none()); // the linear layer
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    pub fn kernel_importance<'a>(
        &self,
        batches: impl IntoIterator<Item = (ArrayView4<'a, F>, &'a [usize])>,
    ) -> Result<Vec<Option<Array2<f64>>>>
    where
        F: 'a,
    {
        let mut dense = self.clone();
        for layer in &mut dense.layers {
            if let Layer::Clustered { layer: c, codebook } = layer {
                let conv = c.to_conv(self.codebooks.get(*codebook)?)?;
                *layer = Layer::Conv(conv);
            }
        }
        let mut sums: Vec<Option<Array2<f64>>> = dense
            .layers
            .iter()
            .map(|layer| match layer {
                Layer::Conv(c) => Some(Array2::zeros((c.out_channels(), c.in_channels()))),
                _ => None,
            })
            .collect();
        let mut count = 0usize;
        for (x, labels) in batches {
            let (logits, tape) = dense.forward_train(x)?;
            let (_, grad) = softmax_cross_entropy(logits.view(), labels)?;
            let grads = dense.backward(&tape, grad)?;
            for (sum, g) in sums.iter_mut().zip(&grads.layers) {
                if let (Some(sum), LayerGrads::Conv(gw, _)) = (sum, g) {
                    for ((o, i), s) in sum.indexed_iter_mut() {
                        let kernel = gw.index_axis(Axis(0), o);
                        let kernel = kernel.index_axis(Axis(0), i);
                        *s += kernel.iter().map(|v| v.to_f64_exact().powi(2)).sum::<f64>();
                    }
                }
            }
            count += 1;
        }
        if count == 0 {
            return Err(Error::Empty {
                what: "the batches for kernel importance",
            });
        }
        let inv = 1.0 / count as f64;
        for sum in sums.iter_mut().flatten() {
            sum.mapv_inplace(|v| v * inv);
        }
        Ok(sums)
    }

    /// As [`Network::compress_where`], with every codebook fitted by sensitivity-weighted
    /// k-means: `importance` has one entry per layer, as [`Network::kernel_importance`]
    /// returns (only the entries of the clustered convolutions are read), passed to
    /// [`Compressor::importance`](crate::Compressor::importance).
    ///
    /// ```
    /// use clustered_conv::nn::{Layer, Linear, Network};
    /// use clustered_conv::{CompressionConfig, Conv2d, ConvGeometry, KernelCodebook};
    /// use ndarray::{Array1, Array2, Array4};
    ///
    /// let conv = Conv2d::new(Array4::from_shape_fn((4, 2, 3, 3), |(o, i, r, c)| ((o * 5 + i * 3 + r * 2 + c) % 7) as f64 * 0.1 - 0.3), None, ConvGeometry::default().padding(1, 1))?;
    /// let fc = Linear { weight: Array2::from_shape_fn((3, 4 * 4 * 4), |(a, b)| ((a * 7 + b) % 5) as f64 * 0.02 - 0.04), bias: Array1::zeros(3) };
    /// let net = Network::new(vec![Layer::Conv(conv), Layer::Relu, Layer::Flatten, Layer::Linear(fc)]);
    /// let x = Array4::from_shape_fn((4, 2, 4, 4), |(n, c, y, x)| ((n + c + y * x) % 5) as f64 * 0.1);
    /// let labels = [0, 1, 2, 0];
    /// let importance = net.kernel_importance([(x.view(), &labels[..])])?;
    /// let config = CompressionConfig::new(KernelCodebook::params(4));
    /// let student = net.compress_where_weighted(&config, |_, _| true, &importance)?;
    /// assert!(matches!(student.layers[0], Layer::Clustered { .. }));
    /// # Ok::<(), clustered_conv::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Network::compress_where`]; an `importance` list whose length is not the number
    /// of layers ([`Error::ShapeMismatch`]), or a clustered convolution without an entry
    /// ([`Error::LayerMismatch`]).
    pub fn compress_where_weighted(
        &self,
        config: &CompressionConfig,
        select: impl Fn(usize, &Conv2d<F>) -> bool,
        importance: &[Option<Array2<f64>>],
    ) -> Result<Network<F>> {
        if importance.len() != self.layers.len() {
            return Err(Error::ShapeMismatch {
                what: "importance entries vs layers",
                expected: vec![self.layers.len()],
                got: vec![importance.len()],
            });
        }
        let (chosen, convs) = self.convolutions_to_cluster(select);
        let views = chosen
            .iter()
            .map(|&l| {
                importance[l]
                    .as_ref()
                    .map(|h| h.view())
                    .ok_or(Error::LayerMismatch {
                        what: "the importance",
                        layer: l,
                        expected: "a convolution",
                        got: "no importance entry",
                    })
            })
            .collect::<Result<Vec<ArrayView2<f64>>>>()?;
        let compressed = config.compressor(&convs).importance(&views).run()?;
        Ok(self.with_clustered(&chosen, compressed))
    }
}

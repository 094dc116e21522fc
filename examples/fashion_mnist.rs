//! Train a small VGG-style CNN on Fashion-MNIST, compress its 3×3 kernels into one shared
//! codebook at several settings, fine-tune each (assignments frozen, centroids, scales, batch
//! norm and classifier trained), and report accuracy, compression and inference time.
//!
//! A first version of the flagship example: progress is printed per batch, results go to the
//! terminal only (CSV/JSON output and saved models are planned).
//!
//! Data: `--data DIR`, else `$FASHION_MNIST_DIR`, else the Debian package
//! `dataset-fashion-mnist`, else the 6,000 / 1,000-image slice vendored in this repository.
//!
//! Run: `cargo run --release --example fashion_mnist -- [--data DIR] [--epochs N]
//! [--finetune-epochs N] [--k 16,64,256] [--train-limit N]`.

use std::path::PathBuf;
use std::time::Instant;

use clustered_conv::nn::{
    relu, relu_backward, softmax_cross_entropy, BatchNorm2d, BatchNormCache, Linear, LrSchedule,
    MaxPool2d, Sgd, SgdState,
};
use clustered_conv::{
    ClusteredConv2d, Conv2d, ConvGeometry, FashionMnist, KernelCodebook, LabelledImages,
};
use ndarray::{s, Array1, Array2, Array3, Array4, ArrayView4, Axis};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `(in, out, pool after)` of the five 3×3 convolutions.
const BLOCKS: [(usize, usize, bool); 5] = [
    (1, 32, false),
    (32, 32, true),
    (32, 64, false),
    (64, 64, true),
    (64, 128, true),
];

#[derive(Clone)]
enum Conv {
    Dense(Conv2d<f32>),
    Clustered(Box<ClusteredConv2d<f32>>),
}

#[derive(Clone)]
struct Model {
    convs: Vec<Conv>,
    norms: Vec<BatchNorm2d<f32>>,
    fc: Linear<f32>,
    codebook: Option<KernelCodebook<f32>>,
}

/// What one block's forward pass keeps for its backward pass.
struct BlockCache {
    input: Array4<f32>,
    bn: BatchNormCache<f32>,
    pre_relu: Array4<f32>,
    post_relu: Array4<f32>,
}

const POOL: MaxPool2d = MaxPool2d {
    kernel: 2,
    stride: 2,
};

impl Model {
    fn new(rng: &mut ChaCha8Rng) -> Res<Self> {
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for &(cin, cout, _) in &BLOCKS {
            let std = (2.0 / (cin * 9) as f32).sqrt();
            let normal = Normal::new(0.0, std)?;
            let w = Array4::from_shape_simple_fn((cout, cin, 3, 3), || normal.sample(rng));
            convs.push(Conv::Dense(Conv2d::new(
                w,
                None,
                ConvGeometry::default().padding(1, 1),
            )?));
            norms.push(BatchNorm2d::new(cout));
        }
        let bound = (1.0 / 1152f32).sqrt();
        let fc = Linear {
            weight: Array2::from_shape_simple_fn((10, 1152), || rng.random_range(-bound..bound)),
            bias: Array1::zeros(10),
        };
        Ok(Model {
            convs,
            norms,
            fc,
            codebook: None,
        })
    }

    fn conv_forward(&self, i: usize, x: ArrayView4<f32>) -> Res<Array4<f32>> {
        Ok(match &self.convs[i] {
            Conv::Dense(c) => c.forward(x)?,
            Conv::Clustered(c) => c.forward(self.codebook.as_ref().ok_or("no codebook")?, x)?,
        })
    }

    /// Logits; with `train`, batch statistics and the caches for [`Model::backward`].
    fn forward(
        &mut self,
        x: Array4<f32>,
        train: bool,
    ) -> Res<(Array2<f32>, Vec<BlockCache>, Array4<f32>)> {
        let mut h = x;
        let mut caches = Vec::new();
        for (i, &(_, _, pool)) in BLOCKS.iter().enumerate() {
            let z = self.conv_forward(i, h.view())?;
            let (y, bn) = if train {
                self.norms[i].forward_train(z.view())?
            } else {
                (
                    self.norms[i].forward_eval(z.view())?,
                    BatchNormCache {
                        normalized: Array4::zeros((0, 0, 0, 0)),
                        inv_std: Array1::zeros(0),
                    },
                )
            };
            let a = relu(y.view());
            let out = if pool {
                POOL.forward(a.view())?
            } else {
                a.clone()
            };
            if train {
                caches.push(BlockCache {
                    input: h,
                    bn,
                    pre_relu: y,
                    post_relu: a,
                });
            }
            h = out;
        }
        let n = h.dim().0;
        let flat = h.clone().into_shape_with_order((n, 1152))?;
        Ok((self.fc.forward(flat.view())?, caches, h))
    }

    /// One SGD step on a batch; returns the loss.
    fn train_step(
        &mut self,
        x: Array4<f32>,
        labels: &[usize],
        sgd: &Sgd,
        epoch: usize,
        states: &mut Vec<SgdState<f32>>,
    ) -> Res<f64> {
        let (logits, caches, last) = self.forward(x, true)?;
        let (loss, grad) = softmax_cross_entropy(logits.view(), labels)?;
        let n = last.dim().0;
        let flat = last.clone().into_shape_with_order((n, 1152))?;
        let fc_grads = self.fc.backward(flat.view(), grad.view())?;
        let mut g = fc_grads.input.into_shape_with_order(last.dim())?;
        let mut param = 0;
        let mut step = |p: ndarray::ArrayViewMutD<f32>, g: ndarray::ArrayViewD<f32>| -> Res<()> {
            if states.len() <= param {
                states.push(SgdState::default());
            }
            sgd.step(epoch, p, g, &mut states[param])?;
            param += 1;
            Ok(())
        };
        step(
            self.fc.weight.view_mut().into_dyn(),
            fc_grads.weight.view().into_dyn(),
        )?;
        step(
            self.fc.bias.view_mut().into_dyn(),
            fc_grads.bias.view().into_dyn(),
        )?;
        let mut centroid_grad = self
            .codebook
            .as_ref()
            .map(|c| Array3::<f32>::zeros(c.centroids().dim()));
        for (i, cache) in caches.iter().enumerate().rev() {
            if BLOCKS[i].2 {
                g = POOL.backward(cache.post_relu.view(), g.view())?;
            }
            let g_bn = relu_backward(cache.pre_relu.view(), g.view());
            let bn_grads = self.norms[i].backward(&cache.bn, g_bn.view())?;
            step(
                self.norms[i].gamma.view_mut().into_dyn(),
                bn_grads.gamma.view().into_dyn(),
            )?;
            step(
                self.norms[i].beta.view_mut().into_dyn(),
                bn_grads.beta.view().into_dyn(),
            )?;
            match &mut self.convs[i] {
                Conv::Dense(c) => {
                    let grads = c.backward(cache.input.view(), bn_grads.input.view())?;
                    step(c.params_mut().0.into_dyn(), grads.weight.view().into_dyn())?;
                    g = grads.input;
                }
                Conv::Clustered(c) => {
                    let cb = self.codebook.as_ref().ok_or("no codebook")?;
                    let grads = c.backward(cb, cache.input.view(), bn_grads.input.view())?;
                    if let Some(buffer) = centroid_grad.as_mut() {
                        grads.accumulate_centroids_into(buffer)?;
                    }
                    if let (Some(scales), Some(gs)) = (c.scales(), grads.scales.as_ref()) {
                        let mut scales = scales.clone();
                        step(scales.view_mut().into_dyn(), gs.view().into_dyn())?;
                        c.set_params(Some(scales), c.bias().cloned())?;
                    }
                    g = grads.input;
                }
            }
        }
        if let (Some(cb), Some(cg)) = (self.codebook.as_mut(), centroid_grad) {
            let mut centroids = cb.centroids().clone();
            step(centroids.view_mut().into_dyn(), cg.view().into_dyn())?;
            cb.set_centroids(centroids)?;
        }
        Ok(loss)
    }

    fn accuracy(&mut self, data: &LabelledImages) -> Res<f64> {
        let mut correct = 0;
        for start in (0..data.labels.len()).step_by(500) {
            let end = (start + 500).min(data.labels.len());
            let (logits, _, _) = self.forward(images(data, start..end), false)?;
            for (row, &label) in logits.outer_iter().zip(data.labels.slice(s![start..end])) {
                let pred = row
                    .iter()
                    .enumerate()
                    .fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
                correct += usize::from(pred == usize::from(label));
            }
        }
        Ok(correct as f64 / data.labels.len() as f64)
    }

    /// Replaces every convolution by its clustered form over one shared codebook.
    fn compress(&self, k: usize, seed: u64) -> Res<Model> {
        let weights: Vec<Array4<f32>> = self
            .convs
            .iter()
            .map(|c| match c {
                Conv::Dense(c) => c.weight().clone(),
                Conv::Clustered(_) => unreachable!("compress a dense model"),
            })
            .collect();
        let views: Vec<_> = weights.iter().map(|w| w.view()).collect();
        let fit = KernelCodebook::params(k)
            .seed(seed)
            .n_init(2)
            .max_iter(100)
            .fit(&views)?;
        let mut model = self.clone();
        for (conv, a) in model.convs.iter_mut().zip(fit.assignments) {
            let scales = a
                .scales
                .map(|s| s.mapv(|v| half::f16::from_f32(v).to_f32()));
            *conv = Conv::Clustered(Box::new(ClusteredConv2d::new(
                a.indices,
                scales,
                None,
                ConvGeometry::default().padding(1, 1),
            )?));
        }
        model.codebook = Some(fit.codebook);
        Ok(model)
    }
}

/// Images `range` as `(n, 1, 28, 28)` floats, normalised with the data set's mean and std.
fn images(data: &LabelledImages, range: std::ops::Range<usize>) -> Array4<f32> {
    let x = data
        .images
        .slice(s![range, .., ..])
        .mapv(|v| (f32::from(v) / 255.0 - 0.286) / 0.353);
    x.insert_axis(Axis(1))
}

/// A random crop (padding 2) and horizontal flip of every image of a batch.
fn augment(x: &Array4<f32>, rng: &mut ChaCha8Rng) -> Array4<f32> {
    let (n, c, h, w) = x.dim();
    let mut out = Array4::<f32>::from_elem((n, c, h, w), (0.0 - 0.286) / 0.353);
    for b in 0..n {
        let (dy, dx) = (rng.random_range(-2i32..=2), rng.random_range(-2i32..=2));
        let flip = rng.random_bool(0.5);
        for y in 0..h {
            for xx in 0..w {
                let sy = y as i32 + dy;
                let sx0 = xx as i32 + dx;
                let sx = if flip { w as i32 - 1 - sx0 } else { sx0 };
                if (0..h as i32).contains(&sy) && (0..w as i32).contains(&sx) {
                    out[[b, 0, y, xx]] = x[[b, 0, sy as usize, sx as usize]];
                }
            }
        }
    }
    out
}

fn train(
    model: &mut Model,
    data: &FashionMnist,
    epochs: usize,
    sgd: &Sgd,
    seed: u64,
    label: &str,
) -> Res<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = data.train.labels.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut states = Vec::new();
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        let start = Instant::now();
        let mut total = 0.0;
        let batches = n / 64;
        for b in 0..batches {
            let idx = &order[b * 64..(b + 1) * 64];
            let x = Array4::from_shape_fn((64, 1, 28, 28), |(i, _, y, xx)| {
                (f32::from(data.train.images[[idx[i], y, xx]]) / 255.0 - 0.286) / 0.353
            });
            let labels: Vec<usize> = idx
                .iter()
                .map(|&i| usize::from(data.train.labels[i]))
                .collect();
            total += model.train_step(augment(&x, &mut rng), &labels, sgd, epoch, &mut states)?;
            if b % 20 == 0 {
                eprint!(
                    "\r{label} epoch {}/{epochs} batch {b}/{batches} loss {:.3}   ",
                    epoch + 1,
                    total / (b + 1) as f64
                );
            }
        }
        let acc = model.accuracy(&data.test)?;
        eprintln!(
            "\r{label} epoch {}/{epochs}: loss {:.3}, test accuracy {:.2} % ({:.0} s)          ",
            epoch + 1,
            total / batches as f64,
            100.0 * acc,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let data_dir = arg("--data").map(PathBuf::from);
    let mut data = FashionMnist::load(data_dir.as_deref())?;
    if let Some(limit) = arg("--train-limit") {
        let limit: usize = limit.parse()?;
        data.train.images = data.train.images.slice(s![..limit, .., ..]).to_owned();
        data.train.labels = data.train.labels.slice(s![..limit]).to_owned();
    }
    println!(
        "data: {:?} ({} train / {} test images)",
        data.source,
        data.train.labels.len(),
        data.test.labels.len()
    );
    let epochs: usize = arg("--epochs").map_or(Ok(8), |v| v.parse())?;
    let finetune: usize = arg("--finetune-epochs").map_or(Ok(2), |v| v.parse())?;
    let ks: Vec<usize> = arg("--k")
        .unwrap_or_else(|| "16,64,256".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;

    let mut rng = ChaCha8Rng::seed_from_u64(2018);
    let mut model = Model::new(&mut rng)?;
    let sgd = Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: LrSchedule::Cosine { epochs },
    };
    train(&mut model, &data, epochs, &sgd, 1, "train")?;
    let dense_acc = model.accuracy(&data.test)?;
    let t = Instant::now();
    model.accuracy(&data.test)?;
    let dense_time = t.elapsed().as_secs_f64();
    let kernels: usize = BLOCKS.iter().map(|&(i, o, _)| i * o).sum();

    let mut rows = vec![format!(
        "| dense | {:.2} % | – | 1.0× | {:.2} s |",
        100.0 * dense_acc,
        dense_time
    )];
    for &k in &ks {
        let mut compressed = model.compress(k, 7)?;
        let after_clustering = compressed.accuracy(&data.test)?;
        let ft = Sgd {
            lr: 0.005,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: LrSchedule::Cosine { epochs: finetune },
        };
        train(
            &mut compressed,
            &data,
            finetune,
            &ft,
            3,
            &format!("fine-tune K={k}"),
        )?;
        let acc = compressed.accuracy(&data.test)?;
        let t = Instant::now();
        compressed.accuracy(&data.test)?;
        let time = t.elapsed().as_secs_f64();
        let bits = (k as f64).log2().ceil() as u32;
        let ratio = clustered_conv::compression_ratio(kernels as u64, 9, bits, 16, k);
        rows.push(format!(
            "| C{k} | {:.2} % | {:.2} % | {ratio:.1}× | {time:.2} s |",
            100.0 * acc,
            100.0 * after_clustering
        ));
    }
    println!("\n| model | test accuracy | right after clustering | 3×3 ratio (§2.1) | test-set inference |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

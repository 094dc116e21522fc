//! A labelled set of float images of any size and channel count, ready for a network, and the
//! per-channel normalisation that turns 8-bit pixels into it.

use ndarray::{Array4, ArrayView3, ArrayViewMut3, Axis};

use crate::error::{Error, Result};

/// Labelled images as a network takes them: `(n, channels, height, width)` floats, already
/// normalised, one class label per image and the classes' names.
///
/// Made by [`ImageFolder::load`](super::ImageFolder::load) (a torchvision-style folder of PNG
/// and JPEG files), [`read_npy_dataset`](super::read_npy_dataset) (NumPy arrays) or
/// [`ImageDataset::new`] (arrays already in memory). Its invariants, checked by every
/// constructor: `labels.len()` is the number of images and every label is below
/// `classes.len()`. The fields are public for reading; a caller who edits them is trusted to
/// keep the invariants (see [`ImageDataset::new`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    /// `(n, channels, height, width)`, normalised (for 8-bit sources `(v/255 − mean) / std`
    /// per channel; see [`Normalization`]).
    pub images: Array4<f32>,
    /// `n` class labels, each an index into `classes`.
    pub labels: Vec<usize>,
    /// Class names; label `i` is `classes[i]`.
    pub classes: Vec<String>,
}

impl ImageDataset {
    /// A data set from arrays already in memory.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `labels.len()` differs from the number of images;
    /// [`Error::LabelOutOfRange`] for a label `≥ classes.len()`.
    pub fn new(images: Array4<f32>, labels: Vec<usize>, classes: Vec<String>) -> Result<Self> {
        if labels.len() != images.len_of(Axis(0)) {
            return Err(Error::ShapeMismatch {
                what: "labels (one per image)",
                expected: vec![images.len_of(Axis(0))],
                got: vec![labels.len()],
            });
        }
        if let Some((row, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l >= classes.len())
        {
            return Err(Error::LabelOutOfRange {
                row,
                label,
                classes: classes.len(),
            });
        }
        Ok(ImageDataset {
            images,
            labels,
            classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Channels per image.
    pub fn channels(&self) -> usize {
        self.images.len_of(Axis(1))
    }

    /// `(height, width)` of every image.
    pub fn image_size(&self) -> (usize, usize) {
        (self.images.len_of(Axis(2)), self.images.len_of(Axis(3)))
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Images `rows` (indices into the set, in the order given, repeats allowed) as an
    /// `(rows.len(), C, H, W)` array, and their labels.
    ///
    /// # Errors
    /// [`Error::RowOutOfRange`] for an index `≥ len()`.
    pub fn batch(&self, rows: &[usize]) -> Result<(Array4<f32>, Vec<usize>)> {
        if let Some(&row) = rows.iter().find(|&&r| r >= self.len()) {
            return Err(Error::RowOutOfRange {
                row,
                len: self.len(),
            });
        }
        let x = self.images.select(Axis(0), rows);
        let labels = rows.iter().map(|&r| self.labels[r]).collect();
        Ok((x, labels))
    }
}

/// Per-channel normalisation of 8-bit pixels, as torchvision's `ToTensor` followed by
/// `Normalize(mean, std)`: a pixel `v` of channel `c` becomes `(v/255 − mean[c]) / std[c]`.
///
/// `mean` and `std` hold one value per channel, or one value for all channels. Every value
/// must be finite and every `std` `> 0`; this is checked when the normalisation is applied
/// (and by [`Normalization::new`]), with [`Error::InvalidNormalization`].
///
/// ```
/// use clustered_conv::data::Normalization;
/// let imagenet = Normalization::imagenet();
/// assert_eq!(imagenet.mean.len(), 3);
/// assert!(Normalization::new(vec![0.5], vec![0.0]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    /// Mean of `v/255`, per channel (or one for all).
    pub mean: Vec<f32>,
    /// Standard deviation of `v/255`, per channel (or one for all).
    pub std: Vec<f32>,
}

impl Default for Normalization {
    /// [`Normalization::unit`]: `v/255`, no centring.
    fn default() -> Self {
        Self::unit()
    }
}

impl Normalization {
    /// A normalisation, checked (any channel count).
    ///
    /// # Errors
    /// [`Error::InvalidNormalization`] for an empty list, a non-finite value, a `std ≤ 0`, or
    /// `mean` and `std` of different lengths when neither has a single value.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        let n = Normalization { mean, std };
        n.check_values()?;
        if n.mean.len() != n.std.len() && n.mean.len() != 1 && n.std.len() != 1 {
            return Err(Error::InvalidNormalization {
                what: format!(
                    "{} means but {} standard deviations (give one per channel, or one for all)",
                    n.mean.len(),
                    n.std.len()
                ),
            });
        }
        Ok(n)
    }

    /// `v/255` in `[0, 1]`: mean 0, std 1 for every channel.
    pub fn unit() -> Self {
        Normalization {
            mean: vec![0.0],
            std: vec![1.0],
        }
    }

    /// The ImageNet statistics used by torchvision's pretrained models (RGB).
    pub fn imagenet() -> Self {
        Normalization {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// Fashion-MNIST's ([`super::FASHION_MNIST_MEAN_STD`]), one channel.
    pub fn fashion_mnist() -> Self {
        let (mean, std) = super::FASHION_MNIST_MEAN_STD;
        Normalization {
            mean: vec![mean],
            std: vec![std],
        }
    }

    fn check_values(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidNormalization { what });
        if self.mean.is_empty() || self.std.is_empty() {
            return bad("mean and std need at least one value".into());
        }
        if let Some((c, m)) = self.mean.iter().enumerate().find(|(_, m)| !m.is_finite()) {
            return bad(format!("mean[{c}] = {m} is not finite"));
        }
        if let Some((c, s)) = self
            .std
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s > 0.0))
        {
            return bad(format!("std[{c}] = {s} must be finite and > 0"));
        }
        Ok(())
    }

    /// `(mean, std)` for each of `channels` channels.
    ///
    /// # Errors
    /// [`Error::InvalidNormalization`] as [`Normalization::new`], or when `mean` or `std` has
    /// neither one value nor `channels`.
    pub fn per_channel(&self, channels: usize) -> Result<Vec<(f32, f32)>> {
        self.check_values()?;
        for (name, len) in [("mean", self.mean.len()), ("std", self.std.len())] {
            if len != 1 && len != channels {
                return Err(Error::InvalidNormalization {
                    what: format!(
                        "{name} has {len} values for images of {channels} channel(s) (give one per channel, or one for all)"
                    ),
                });
            }
        }
        let pick = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
        Ok((0..channels)
            .map(|c| (pick(&self.mean, c), pick(&self.std, c)))
            .collect())
    }
}

/// Fills `out` `(C, H, W)` from interleaved 8-bit pixels `hwc` (`H·W·C` bytes, channel
/// fastest), normalised with `stats` (one `(mean, std)` per channel).
pub(crate) fn normalise_hwc(hwc: &[u8], stats: &[(f32, f32)], mut out: ArrayViewMut3<f32>) {
    let (c, h, w) = out.dim();
    debug_assert_eq!(hwc.len(), c * h * w);
    for ((ch, y, x), o) in out.indexed_iter_mut() {
        let (mean, std) = stats[ch];
        *o = (f32::from(hwc[(y * w + x) * c + ch]) / 255.0 - mean) / std;
    }
}

/// Fills `out` `(C, H, W)` from 8-bit pixels already `(C, H, W)`, normalised with `stats`.
pub(crate) fn normalise_chw(
    chw: ArrayView3<u8>,
    stats: &[(f32, f32)],
    mut out: ArrayViewMut3<f32>,
) {
    for ((ch, y, x), o) in out.indexed_iter_mut() {
        let (mean, std) = stats[ch];
        *o = (f32::from(chw[[ch, y, x]]) / 255.0 - mean) / std;
    }
}

//! Data sets (feature `data`): the IDX reader (raw or gzipped) and Fashion-MNIST, and the
//! user's own labelled images for evaluating and fine-tuning a network.
//!
//! * [`LabelledImages`]: 8-bit greyscale `(n, H, W)` images (IDX files, Fashion-MNIST).
//! * [`ImageDataset`]: float `(n, C, H, W)` images, normalised, with class names, read from
//!   a torchvision-style folder of PNG/JPEG files ([`ImageFolder`]) or from NumPy `.npy`
//!   arrays ([`read_npy_dataset`]), normalised with a [`Normalization`].
//!
//! The crate never embeds a path of the machine it was built on: the data is looked up in a
//! directory the caller names, `$FASHION_MNIST_DIR`, the Debian package's location, and a
//! fallback directory the caller may pass (this repository's examples pass their vendored
//! slice).

mod dataset;
mod folder;
mod idx;
mod npy;

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array3};

use crate::error::{Error, Result};

pub use dataset::{ImageDataset, Normalization};
pub use folder::{Channels, ImageFolder, ImageFolderListing, IMAGE_EXTENSIONS};
pub use idx::{read_idx, read_idx_file, Idx, MAX_IDX_BYTES};
pub use npy::{read_npy_dataset, read_npy_images, FloatImages, NpyOptions, MAX_NPY_BYTES};

/// Images and labels of one split.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledImages {
    /// `(n, height, width)` grey levels 0–255.
    pub images: Array3<u8>,
    /// `n` class labels.
    pub labels: Array1<u8>,
}

impl LabelledImages {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Images `rows` (indices into the set, in the order given) as `(n, 1, H, W)` floats
    /// `(v/255 − mean) / std`, and their labels.
    ///
    /// # Errors
    /// [`Error::RowOutOfRange`] for an index `≥ len()`.
    pub fn batch(
        &self,
        rows: &[usize],
        mean: f32,
        std: f32,
    ) -> Result<(ndarray::Array4<f32>, Vec<usize>)> {
        if let Some(&row) = rows.iter().find(|&&r| r >= self.len()) {
            return Err(Error::RowOutOfRange {
                row,
                len: self.len(),
            });
        }
        let (_, h, w) = self.images.dim();
        let x = ndarray::Array4::from_shape_fn((rows.len(), 1, h, w), |(b, _, y, x)| {
            (f32::from(self.images[[rows[b], y, x]]) / 255.0 - mean) / std
        });
        let labels = rows.iter().map(|&r| usize::from(self.labels[r])).collect();
        Ok((x, labels))
    }

    /// The first `n` images (all of them when `n ≥ len()`).
    pub fn truncated(&self, n: usize) -> LabelledImages {
        let n = n.min(self.len());
        LabelledImages {
            images: self
                .images
                .slice_axis(ndarray::Axis(0), (..n).into())
                .to_owned(),
            labels: self
                .labels
                .slice_axis(ndarray::Axis(0), (..n).into())
                .to_owned(),
        }
    }
}

/// Fashion-MNIST's training-set pixel mean and standard deviation (of `v/255`), the usual
/// normalisation constants.
pub const FASHION_MNIST_MEAN_STD: (f32, f32) = (0.2860, 0.3530);

/// Where a data set was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// The directory passed explicitly.
    Explicit(PathBuf),
    /// The directory in `$FASHION_MNIST_DIR`.
    Environment(PathBuf),
    /// The Debian package `dataset-fashion-mnist`.
    Debian(PathBuf),
    /// The fallback directory passed by the caller (this repository's examples and tests
    /// pass their vendored 6,000 / 1,000-image slice).
    Fallback(PathBuf),
}

impl DataSource {
    /// The directory.
    pub fn dir(&self) -> &Path {
        match self {
            DataSource::Explicit(p)
            | DataSource::Environment(p)
            | DataSource::Debian(p)
            | DataSource::Fallback(p) => p,
        }
    }
}

/// Fashion-MNIST (Zalando, MIT licence): 28×28 grey images of 10 kinds of clothing.
#[derive(Debug, Clone, PartialEq)]
pub struct FashionMnist {
    /// The training split.
    pub train: LabelledImages,
    /// The test split.
    pub test: LabelledImages,
    /// Where it was read from.
    pub source: DataSource,
}

/// The four files of an MNIST-style directory, `.gz` or raw.
const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Number of classes.
pub const FASHION_MNIST_CLASSES: usize = 10;

impl FashionMnist {
    /// Environment variable naming a data directory.
    pub const ENV: &'static str = "FASHION_MNIST_DIR";
    /// Where the Debian package `dataset-fashion-mnist` installs the files.
    pub const DEBIAN_DIR: &'static str = "/usr/share/datasets/fashion-mnist";
    /// The first directory, in order `explicit`, `$FASHION_MNIST_DIR`, the Debian location and
    /// `fallback`, that holds all four files (gzipped or raw). An explicit directory or
    /// environment variable that lacks them is an error, not skipped.
    ///
    /// ```
    /// use clustered_conv::data::FashionMnist;
    /// use clustered_conv::Error;
    /// # if std::env::var_os(FashionMnist::ENV).is_none()
    /// #     && !std::path::Path::new(FashionMnist::DEBIAN_DIR).exists() {
    /// let missing = std::env::temp_dir().join("no-fashion-mnist-here");
    /// let err = FashionMnist::locate(None, Some(&missing)).unwrap_err();
    /// assert!(matches!(err, Error::DataNotFound { tried } if tried.contains(&missing)));
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::DataNotFound`] listing every directory tried.
    pub fn locate(explicit: Option<&Path>, fallback: Option<&Path>) -> Result<DataSource> {
        let mut tried = Vec::new();
        let chosen = if let Some(dir) = explicit {
            Some(DataSource::Explicit(dir.to_path_buf()))
        } else {
            std::env::var_os(Self::ENV).map(|d| DataSource::Environment(PathBuf::from(d)))
        };
        if let Some(source) = chosen {
            if has_all_files(source.dir()) {
                return Ok(source);
            }
            tried.push(source.dir().to_path_buf());
            return Err(Error::DataNotFound { tried });
        }
        let debian = DataSource::Debian(PathBuf::from(Self::DEBIAN_DIR));
        let fallback = fallback.map(|d| DataSource::Fallback(d.to_path_buf()));
        for source in std::iter::once(debian).chain(fallback) {
            if has_all_files(source.dir()) {
                return Ok(source);
            }
            tried.push(source.dir().to_path_buf());
        }
        Err(Error::DataNotFound { tried })
    }

    /// Locates (see [`FashionMnist::locate`]) and loads the data set.
    ///
    /// # Errors
    /// As [`FashionMnist::locate`] and [`FashionMnist::load_dir`].
    pub fn load(explicit: Option<&Path>, fallback: Option<&Path>) -> Result<Self> {
        let source = Self::locate(explicit, fallback)?;
        let (train, test) = Self::load_dir(source.dir())?;
        Ok(FashionMnist {
            train,
            test,
            source,
        })
    }

    /// Loads the train and test splits from `dir`.
    ///
    /// # Errors
    /// Unreadable or malformed files, images that are not `(n, 28, 28)`, labels that are not
    /// `(n)` for the same `n`, or a label ≥ 10.
    pub fn load_dir(dir: &Path) -> Result<(LabelledImages, LabelledImages)> {
        let read = |name: &str| read_idx_file(&file_in(dir, name));
        let split = |images: &str, labels: &str| -> Result<LabelledImages> {
            let images = read(images)?;
            let labels = read(labels)?;
            split_from(images, labels)
        };
        Ok((split(FILES[0], FILES[1])?, split(FILES[2], FILES[3])?))
    }
}

/// `dir/name.gz` when it exists, else `dir/name`.
fn file_in(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        gz
    } else {
        dir.join(name)
    }
}

fn has_all_files(dir: &Path) -> bool {
    FILES.iter().all(|f| file_in(dir, f).is_file())
}

fn split_from(images: Idx, labels: Idx) -> Result<LabelledImages> {
    let invalid = |what, expected: usize, got: usize| Error::InvalidIdx {
        what,
        expected: expected as u64,
        got: got as u64,
    };
    if images.dims.len() != 3 {
        return Err(invalid(
            "image dimensions (n, 28, 28)",
            3,
            images.dims.len(),
        ));
    }
    if images.dims[1] != 28 || images.dims[2] != 28 {
        return Err(invalid(
            "image side",
            28,
            images.dims[1].max(images.dims[2]),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(invalid("label dimensions (n)", 1, labels.dims.len()));
    }
    if labels.dims[0] != images.dims[0] {
        return Err(invalid(
            "label count (one per image)",
            images.dims[0],
            labels.dims[0],
        ));
    }
    if let Some(&bad) = labels
        .data
        .iter()
        .find(|&&l| usize::from(l) >= FASHION_MNIST_CLASSES)
    {
        return Err(invalid(
            "label value",
            FASHION_MNIST_CLASSES - 1,
            usize::from(bad),
        ));
    }
    let n = images.dims[0];
    Ok(LabelledImages {
        images: Array3::from_shape_vec((n, 28, 28), images.data)
            .expect("n·28·28 bytes were checked"),
        labels: Array1::from_vec(labels.data),
    })
}

//! `--data` and friends: the user's labelled images from an image folder, `.npy` arrays or
//! IDX files, normalised as the model expects.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use clustered_conv::data::{
    read_idx_file, read_npy_dataset, read_npy_images, Channels, FloatImages, ImageFolder,
    Normalization, NpyOptions,
};
use ndarray::{Array4, Axis};

/// Where the images come from and how they are normalised.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Images: a directory with one sub-directory of PNG/JPEG files per class (torchvision's
    /// ImageFolder; classes sorted by name), an `.npy` array `N×C×H×W`, or an IDX file
    /// (`*-idx3-ubyte`, optionally gzipped).
    #[arg(long)]
    pub data: PathBuf,
    /// Labels for `.npy` (an integer `.npy` array of N) or IDX (`*-idx1-ubyte`) images.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    #[command(flatten)]
    pub normalization: NormalizationArgs,
}

/// How pixels become network inputs.
#[derive(Args, Debug, Clone)]
pub struct NormalizationArgs {
    /// Mean of `pixel/255`, one value or one per channel (comma-separated), e.g.
    /// `0.485,0.456,0.406`; default 0.
    #[arg(long, value_delimiter = ',')]
    pub mean: Vec<f32>,
    /// Standard deviation of `pixel/255`, one value or one per channel; default 1.
    #[arg(long, value_delimiter = ',')]
    pub std: Vec<f32>,
    /// What float `.npy` images hold: already `normalized` (used as they are), `unit`
    /// (`[0, 1]`) or `bytes` (`[0, 255]`). `uint8` arrays are always pixels.
    #[arg(long, value_enum, default_value_t = FloatKind::Normalized)]
    pub float_images: FloatKind,
}

/// [`FloatImages`] for the command line.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatKind {
    /// Already normalised.
    Normalized,
    /// `[0, 1]`.
    Unit,
    /// `[0, 255]`.
    Bytes,
}

/// Images ready for a network, with labels when the source has them.
pub struct Images {
    /// `(N, C, H, W)`, normalised.
    pub images: Array4<f32>,
    /// One label per image, when known.
    pub labels: Option<Vec<usize>>,
    /// Class names (from the folder), else `"0"`, `"1"`, ….
    pub classes: Vec<String>,
    /// The file of each image (image folders only).
    pub files: Option<Vec<PathBuf>>,
}

impl NormalizationArgs {
    fn normalization(&self) -> CliResult<Normalization> {
        let or = |v: &[f32], d: f32| if v.is_empty() { vec![d] } else { v.to_vec() };
        Ok(Normalization::new(or(&self.mean, 0.0), or(&self.std, 1.0))?)
    }
}

impl DataArgs {
    /// Loads the images as `channels`-channel inputs (1 converts colour images to grey, 3
    /// grey to RGB, for image folders). With `need_labels`, sources without labels are
    /// refused.
    pub fn load(&self, channels: usize, need_labels: bool) -> CliResult<Images> {
        let normalization = self.normalization.normalization()?;
        let images = if self.data.is_dir() {
            self.folder(channels, &normalization)?
        } else if has_extension(&self.data, "npy") {
            self.npy(normalization)?
        } else {
            self.idx(&normalization)?
        };
        if need_labels && images.labels.is_none() {
            return Err(usage(format!(
                "{} needs --labels (an .npy or IDX file of one label per image)",
                self.data.display()
            )));
        }
        if images.images.len_of(Axis(1)) != channels {
            return Err(usage(format!(
                "{} holds {}-channel images but the model takes {channels} channels",
                self.data.display(),
                images.images.len_of(Axis(1))
            )));
        }
        eprintln!(
            "{}: {} images of {:?}{}",
            self.data.display(),
            images.images.len_of(Axis(0)),
            &images.images.shape()[1..],
            images.labels.as_ref().map_or(String::new(), |_| format!(
                ", {} classes",
                images.classes.len()
            ))
        );
        Ok(images)
    }

    fn folder(&self, channels: usize, normalization: &Normalization) -> CliResult<Images> {
        let channels = match channels {
            1 => Channels::Grey,
            3 => Channels::Rgb,
            c => {
                return Err(usage(format!(
                    "image folders give 1 or 3 channels; the model takes {c}"
                )))
            }
        };
        let folder = ImageFolder::load(&self.data, channels, normalization)?;
        Ok(Images {
            images: folder.dataset.images,
            labels: Some(folder.dataset.labels),
            classes: folder.dataset.classes,
            files: Some(folder.files),
        })
    }

    fn npy(&self, normalization: Normalization) -> CliResult<Images> {
        let options = NpyOptions {
            normalization,
            float_images: match self.normalization.float_images {
                FloatKind::Normalized => FloatImages::Normalized,
                FloatKind::Unit => FloatImages::Unit,
                FloatKind::Bytes => FloatImages::Bytes,
            },
            classes: None,
        };
        Ok(match &self.labels {
            Some(labels) => {
                let set = read_npy_dataset(&self.data, labels, &options)?;
                Images {
                    images: set.images,
                    labels: Some(set.labels),
                    classes: set.classes,
                    files: None,
                }
            }
            None => Images {
                images: read_npy_images(&self.data, &options)?,
                labels: None,
                classes: Vec::new(),
                files: None,
            },
        })
    }

    fn idx(&self, normalization: &Normalization) -> CliResult<Images> {
        let idx = read_idx_file(&self.data)?;
        let [n, h, w] = idx.dims[..] else {
            return Err(usage(format!(
                "{} is an IDX array of {:?}; images are N×H×W",
                self.data.display(),
                idx.dims
            )));
        };
        let per = normalization.per_channel(1)?;
        let (mean, std) = per[0];
        let images = Array4::from_shape_vec((n, 1, h, w), idx.data)
            .map_err(|e| usage(e.to_string()))?
            .mapv(|v| (f32::from(v) / 255.0 - mean) / std);
        let labels = match &self.labels {
            Some(path) => Some(idx_labels(path, n)?),
            None => None,
        };
        let classes = labels
            .as_ref()
            .map_or(0, |l: &Vec<usize>| l.iter().max().map_or(0, |m| m + 1));
        Ok(Images {
            images,
            labels,
            classes: (0..classes).map(|c| c.to_string()).collect(),
            files: None,
        })
    }
}

/// `n` labels from an IDX label file.
fn idx_labels(path: &Path, n: usize) -> CliResult<Vec<usize>> {
    let idx = read_idx_file(path)?;
    if idx.dims != [n] {
        return Err(usage(format!(
            "{} holds labels of shape {:?}; the images need {n}",
            path.display(),
            idx.dims
        )));
    }
    Ok(idx.data.into_iter().map(usize::from).collect())
}

/// Whether `path` ends in `.ext` (any case).
pub fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Errors of the commands: the library's, or a usage error with its message.
pub type CliResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A usage error with its message.
pub fn usage(what: String) -> Box<dyn std::error::Error> {
    what.into()
}

//! Labelled images from NumPy `.npy` files (through `ndarray-npy`).

use std::io::Read;
use std::path::Path;

use ndarray::{Array4, ArrayD, Axis, Ix4};
use ndarray_npy::{ReadNpyExt, ReadableElement};

use super::dataset::{normalise_chw, ImageDataset, Normalization};
use crate::error::{Error, Result};

/// Largest `.npy` file read, in bytes; checked before the file is read.
pub const MAX_NPY_BYTES: u64 = 1 << 32;

/// What floating-point (`float32`, `float64`) image arrays hold. 8-bit (`uint8`) arrays are
/// always pixels `0–255` and are normalised `(v/255 − mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FloatImages {
    /// Already normalised, as a network takes them: used as they are, the normalisation is
    /// not applied (the default: a float array saved from a PyTorch pipeline usually is).
    #[default]
    Normalized,
    /// `[0, 1]` values, as torchvision's `ToTensor` gives: `(x − mean) / std`.
    Unit,
    /// `[0, 255]` values stored as floats: `(x/255 − mean) / std`.
    Bytes,
}

/// How [`read_npy_dataset`] interprets the arrays.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NpyOptions {
    /// Applied to `uint8` images, and to float images unless `float_images` is
    /// [`FloatImages::Normalized`]. Default: [`Normalization::unit`].
    pub normalization: Normalization,
    /// What float images hold. Default: [`FloatImages::Normalized`].
    pub float_images: FloatImages,
    /// Class names; `None` names the classes `"0"`, `"1"`, … up to the largest label.
    pub classes: Option<Vec<String>>,
}

/// Reads a data set from two `.npy` files, as NumPy's `np.save` writes them:
///
/// * `images`: `(n, channels, height, width)` (channels first, as PyTorch), of dtype
///   `float32`, `float64` (converted to `f32`) or `uint8`, either byte order, C or Fortran
///   order. See [`FloatImages`] for how floats are taken; `uint8` pixels are normalised with
///   `options.normalization`. Float images must be finite.
/// * `labels`: `(n)` class indices of any integer dtype (`int8` to `int64`, `uint8` to
///   `uint64`), none negative.
///
/// ```
/// use clustered_conv::data::{read_npy_dataset, NpyOptions, Normalization};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Two 1×2×2 uint8 images and int64 labels, as `np.save` writes them.
/// fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
///     let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
///     while (10 + header.len() + 1) % 64 != 0 { header.push(' '); }
///     header.push('\n');
///     let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
///     bytes.extend((header.len() as u16).to_le_bytes());
///     bytes.extend(header.as_bytes());
///     bytes.extend(data);
///     bytes
/// }
/// let dir = std::env::temp_dir().join(format!("clustered-conv-doc-npy-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// std::fs::write(dir.join("x.npy"), npy("|u1", "(2, 1, 2, 2)", &[0, 51, 102, 255, 0, 0, 0, 0]))?;
/// let labels: Vec<u8> = [1i64, 0].iter().flat_map(|l| l.to_le_bytes()).collect();
/// std::fs::write(dir.join("y.npy"), npy("<i8", "(2,)", &labels))?;
///
/// let options = NpyOptions {
///     normalization: Normalization::new(vec![0.5], vec![0.25])?,
///     ..NpyOptions::default()
/// };
/// let data = read_npy_dataset(&dir.join("x.npy"), &dir.join("y.npy"), &options)?;
/// assert_eq!(data.images.dim(), (2, 1, 2, 2));
/// assert_eq!(data.images[[0, 0, 1, 1]], (1.0 - 0.5) / 0.25);
/// assert_eq!((data.labels, data.classes), (vec![1, 0], vec!["0".to_string(), "1".into()]));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::Io`] for an unreadable file; [`Error::InvalidNpy`] naming the file for a malformed
/// file, a dtype other than those above, images that are not 4-D or hold no image, labels that
/// are not 1-D, a label count different from the image count, a negative label, a file larger
/// than [`MAX_NPY_BYTES`]; [`Error::NonFinite`] for a NaN or infinite float pixel;
/// [`Error::InvalidNormalization`] for a normalisation that does not fit the channels (or is
/// invalid) when it is applied; [`Error::LabelOutOfRange`] for a label beyond the class names
/// given.
pub fn read_npy_dataset(
    images: &Path,
    labels: &Path,
    options: &NpyOptions,
) -> Result<ImageDataset> {
    let image_array = read_images(images, options)?;
    let label_list = read_labels(labels)?;
    let n = image_array.len_of(Axis(0));
    if label_list.len() != n {
        return Err(Error::InvalidNpy {
            path: labels.to_path_buf(),
            what: format!(
                "holds {} labels but {} holds {n} images (one label per image)",
                label_list.len(),
                images.display()
            ),
        });
    }
    let classes = match &options.classes {
        Some(classes) => classes.clone(),
        None => {
            let top = label_list.iter().copied().max().unwrap_or(0);
            (0..=top).map(|c| c.to_string()).collect()
        }
    };
    ImageDataset::new(image_array, label_list, classes)
}

/// A whole `.npy` file, with its header's dtype and shape (checked against its size).
struct Npy {
    bytes: Vec<u8>,
    descr: String,
    shape: Vec<usize>,
}

fn invalid(path: &Path, what: String) -> Error {
    Error::InvalidNpy {
        path: path.to_path_buf(),
        what,
    }
}

/// Element size of the dtypes read here (`None` for the others).
fn item_size(descr: &str) -> Option<usize> {
    // `get`, not slicing: the descriptor comes from the file and may not be ASCII.
    let (order, kind) = (descr.get(..1)?, descr.get(1..)?);
    if !matches!(order, "<" | ">" | "|" | "=") {
        return None;
    }
    match kind {
        "u1" | "i1" => Some(1),
        "u2" | "i2" => Some(2),
        "u4" | "i4" | "f4" => Some(4),
        "u8" | "i8" | "f8" => Some(8),
        _ => None,
    }
}

/// Reads `path` and checks its header against its size, before anything of the header's size
/// is allocated.
fn open(path: &Path) -> Result<Npy> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_NPY_BYTES {
        return Err(invalid(
            path,
            format!("the file is {size} bytes, above the limit of {MAX_NPY_BYTES}"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_NPY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let mut rest: &[u8] = &bytes;
    let header = ndarray_npy::npy::header::Header::from_reader(&mut rest)
        .map_err(|e| invalid(path, format!("not a readable .npy header: {e}")))?;
    let descr = header.type_descriptor.as_string().cloned().ok_or_else(|| {
        invalid(
            path,
            format!(
                "structured dtype {} is not supported",
                header.type_descriptor
            ),
        )
    })?;
    let size = item_size(&descr).ok_or_else(|| {
        invalid(
            path,
            format!(
                "dtype {descr:?} is not supported (expected an integer or float32/float64 dtype)"
            ),
        )
    })?;
    let needed = header
        .shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d));
    if needed != Some(rest.len()) {
        return Err(invalid(
            path,
            format!(
                "holds {} bytes of data but its header's shape {:?} of {descr} needs {}",
                rest.len(),
                header.shape,
                needed.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string())
            ),
        ));
    }
    Ok(Npy {
        bytes,
        descr,
        shape: header.shape,
    })
}

fn read_as<T: ReadableElement>(path: &Path, npy: &Npy) -> Result<ArrayD<T>> {
    ArrayD::<T>::read_npy(npy.bytes.as_slice())
        .map_err(|e| invalid(path, format!("cannot read its {} data: {e}", npy.descr)))
}

/// Reads only the images of a data set (as [`read_npy_dataset`] does), for predictions
/// without labels.
///
/// # Errors
/// As [`read_npy_dataset`], for the images.
pub fn read_npy_images(path: &Path, options: &NpyOptions) -> Result<Array4<f32>> {
    read_images(path, options)
}

fn read_images(path: &Path, options: &NpyOptions) -> Result<Array4<f32>> {
    let npy = open(path)?;
    if npy.shape.len() != 4 {
        return Err(invalid(
            path,
            format!(
                "images must be 4-D (n, channels, height, width), got shape {:?}{}",
                npy.shape,
                if npy.shape.len() == 3 {
                    " (for single-channel (n, height, width) images save x[:, None])"
                } else {
                    ""
                }
            ),
        ));
    }
    if npy.shape.contains(&0) {
        return Err(invalid(
            path,
            format!("images of shape {:?} hold no pixel", npy.shape),
        ));
    }
    let kind = &npy.descr[1..];
    let as4 = |a: ArrayD<f32>| {
        a.into_dimensionality::<Ix4>()
            .map_err(|e| invalid(path, format!("images: {e}")))
    };
    let floats = match kind {
        "u1" => {
            let raw = read_as::<u8>(path, &npy)?
                .into_dimensionality::<Ix4>()
                .map_err(|e| invalid(path, format!("images: {e}")))?;
            let (n, c, h, w) = raw.dim();
            let stats = options.normalization.per_channel(c)?;
            let mut out = Array4::<f32>::zeros((n, c, h, w));
            for (o, r) in out.outer_iter_mut().zip(raw.outer_iter()) {
                normalise_chw(r, &stats, o);
            }
            return Ok(out);
        }
        "f4" => as4(read_as::<f32>(path, &npy)?)?,
        // f64 → f32 rounds to nearest; values beyond f32's range become infinite and are
        // refused below.
        "f8" => as4(read_as::<f64>(path, &npy)?.mapv(|v| v as f32))?,
        _ => {
            return Err(invalid(
                path,
                format!(
                    "images of dtype {} are not supported (expected uint8, float32 or float64)",
                    npy.descr
                ),
            ))
        }
    };
    // Standard (C) layout whatever the file's order.
    let mut floats = floats.as_standard_layout().into_owned();
    if let Some(index) = floats.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "images",
            index,
        });
    }
    let scale = match options.float_images {
        FloatImages::Normalized => return Ok(floats),
        FloatImages::Unit => 1.0,
        FloatImages::Bytes => 255.0,
    };
    let stats = options.normalization.per_channel(floats.len_of(Axis(1)))?;
    for mut image in floats.outer_iter_mut() {
        for (c, mut plane) in image.outer_iter_mut().enumerate() {
            let (mean, std) = stats[c];
            plane.mapv_inplace(|v| (v / scale - mean) / std);
        }
    }
    Ok(floats)
}

fn read_labels(path: &Path) -> Result<Vec<usize>> {
    let npy = open(path)?;
    if npy.shape.len() != 1 {
        return Err(invalid(
            path,
            format!("labels must be 1-D (n), got shape {:?}", npy.shape),
        ));
    }
    fn convert<T: ReadableElement + Copy + Into<i128>>(
        path: &Path,
        npy: &Npy,
    ) -> Result<Vec<usize>> {
        read_as::<T>(path, npy)?
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let v: i128 = v.into();
                usize::try_from(v).map_err(|_| {
                    invalid(
                        path,
                        if v < 0 {
                            format!("label {i} is negative ({v}); labels are class indices from 0")
                        } else {
                            format!("label {i} ({v}) does not fit in usize")
                        },
                    )
                })
            })
            .collect()
    }
    match &npy.descr[1..] {
        "i1" => convert::<i8>(path, &npy),
        "i2" => convert::<i16>(path, &npy),
        "i4" => convert::<i32>(path, &npy),
        "i8" => convert::<i64>(path, &npy),
        "u1" => convert::<u8>(path, &npy),
        "u2" => convert::<u16>(path, &npy),
        "u4" => convert::<u32>(path, &npy),
        "u8" => convert::<u64>(path, &npy),
        _ => Err(invalid(
            path,
            format!(
                "labels of dtype {} are not supported (expected an integer dtype)",
                npy.descr
            ),
        )),
    }
}

//! torchvision-style image folders: `root/<class>/<image>` (PNG or JPEG).

use std::path::{Path, PathBuf};

use ndarray::{Array4, Axis};
use rayon::prelude::*;

use super::dataset::{normalise_hwc, ImageDataset, Normalization};
use crate::error::{Error, Result};

/// How many channels the images are converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channels {
    /// One grey channel: colour images are converted as Pillow's `convert("L")` (what
    /// torchvision's `Grayscale` does): `L = (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16`, i.e.
    /// ITU-R 601-2 luma `0.299 R + 0.587 G + 0.114 B`, rounded.
    Grey,
    /// Red, green, blue: grey images are replicated to three channels (Pillow's
    /// `convert("RGB")`, what torchvision's default loader does).
    Rgb,
}

impl Channels {
    /// 1 or 3.
    pub fn count(self) -> usize {
        match self {
            Channels::Grey => 1,
            Channels::Rgb => 3,
        }
    }
}

/// A labelled image data set read from a folder laid out as torchvision's `ImageFolder`
/// expects:
///
/// ```text
/// root/cat/001.png
/// root/cat/002.jpg
/// root/dog/a.jpeg
/// root/dog/more/b.png      (sub-directories of a class are searched too)
/// ```
///
/// * The classes are the sub-directories of `root`, sorted by name (byte order, which is
///   Python's `sorted` for UTF-8 names); label `i` is the `i`-th class.
/// * Within a class the images are found as torchvision's `make_dataset` finds them: the
///   directories of the class's tree sorted by path, and the files of each directory sorted by
///   name. So the rows of the data set have a deterministic order, the one torchvision gives.
/// * Images are the files whose name ends in `.png`, `.jpg` or `.jpeg` (any case); other files
///   are skipped, and so are hidden files and directories (names starting with `.`), which
///   torchvision would not skip. Sub-directories of a class that are symbolic links are not
///   followed (a class directory itself, or an image file, may be a link).
/// * Each image is decoded with the `image` crate (the format is recognised from the first
///   bytes, falling back on the extension), converted to [`Channels`] (alpha is dropped, 16-bit
///   samples are rounded to 8 bits) and normalised `(v/255 − mean) / std` per channel.
/// * All images must have the same size: nothing is resized or cropped.
///
/// Decoding runs in parallel on rayon's pool; the result and the error reported (the first in
/// the order above) do not depend on the number of threads.
///
/// JPEG decoders differ slightly (inverse DCT rounding, chroma upsampling): the pixels read here
/// may differ from Pillow's (and so torchvision's) by a few levels for JPEG files; PNG files
/// give identical pixels.
///
/// ```
/// use clustered_conv::data::{Channels, ImageFolder, Normalization};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = std::env::temp_dir().join(format!("clustered-conv-doc-folder-{}", std::process::id()));
/// for (class, file) in [("cat", "a.png"), ("cat", "b.png"), ("dog", "c.png")] {
///     std::fs::create_dir_all(root.join(class))?;
///     // Any 8×6 PNG or JPEG; here a uniform grey one written with the `image` crate.
///     image::GrayImage::from_pixel(8, 6, image::Luma([51])).save(root.join(class).join(file))?;
/// }
/// let folder = ImageFolder::load(&root, Channels::Rgb, &Normalization::new(vec![0.1], vec![0.5])?)?;
/// let data = &folder.dataset;
/// assert_eq!(data.classes, ["cat", "dog"]);
/// assert_eq!(data.labels, [0, 0, 1]);
/// assert_eq!(data.images.dim(), (3, 3, 6, 8)); // (n, channels, height, width)
/// assert!((data.images[[2, 1, 5, 7]] - (51.0 / 255.0 - 0.1) / 0.5).abs() < 1e-6);
/// assert_eq!(folder.files[2], root.join("dog").join("c.png"));
/// let (batch, labels) = data.batch(&[2, 0])?;
/// assert_eq!((batch.dim().0, labels), (2, vec![1, 0]));
/// # std::fs::remove_dir_all(&root)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolder {
    /// The images, labels and class names.
    pub dataset: ImageDataset,
    /// The file of each row of the data set.
    pub files: Vec<PathBuf>,
}

/// The classes and image files of an image folder, before decoding
/// ([`ImageFolder::list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolderListing {
    /// Class names, sorted; label `i` is `classes[i]`.
    pub classes: Vec<String>,
    /// Every image file, in the data set's order.
    pub files: Vec<PathBuf>,
    /// The label of each file.
    pub labels: Vec<usize>,
}

/// The extensions recognised as images (compared without regard to case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

impl ImageFolder {
    /// Lists the classes and the image files of the folder `root` (see [`ImageFolder`] for
    /// the layout and order) without decoding anything: the class names, and each file with
    /// its label.
    ///
    /// # Errors
    /// [`Error::Io`] for a directory that cannot be listed;
    /// [`Error::InvalidImageFolder`] when `root` has no class sub-directories, a class
    /// directory holds no image, or a class name is not valid UTF-8.
    pub fn list(root: &Path) -> Result<ImageFolderListing> {
        let invalid = |what: String| Error::InvalidImageFolder {
            root: root.to_path_buf(),
            what,
        };
        let mut classes = Vec::new();
        for (name, path) in read_dir_sorted(root)? {
            if is_hidden(&name) {
                continue;
            }
            // Follows a symbolic link: a class directory may be one.
            if !path.is_dir() {
                continue;
            }
            let name = name.into_string().map_err(|name| {
                invalid(format!("class directory name {name:?} is not valid UTF-8"))
            })?;
            classes.push((name, path));
        }
        if classes.is_empty() {
            return Err(invalid(
                "no class sub-directories (expected root/<class>/<image>.png|jpg|jpeg)".into(),
            ));
        }
        classes.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (label, (_, dir)) in classes.iter().enumerate() {
            let before = files.len();
            let mut dirs = Vec::new();
            collect_dirs(dir, &mut dirs)?;
            dirs.sort_by(|a, b| {
                a.as_os_str()
                    .as_encoded_bytes()
                    .cmp(b.as_os_str().as_encoded_bytes())
            });
            for d in &dirs {
                for (name, path) in read_dir_sorted(d)? {
                    if !is_hidden(&name) && has_image_extension(&path) && path.is_file() {
                        files.push(path);
                        labels.push(label);
                    }
                }
            }
            if files.len() == before {
                return Err(invalid(format!(
                    "class directory {} holds no .png, .jpg or .jpeg file",
                    dir.display()
                )));
            }
        }
        Ok(ImageFolderListing {
            classes: classes.into_iter().map(|(name, _)| name).collect(),
            files,
            labels,
        })
    }

    /// Reads the folder `root` (see [`ImageFolder`]): every image converted to `channels` and
    /// normalised with `normalization`.
    ///
    /// # Errors
    /// As [`ImageFolder::list`]; [`Error::InvalidNormalization`] for a normalisation that does
    /// not fit `channels` or has a `std ≤ 0` or a non-finite value; [`Error::Io`] for an
    /// unreadable file; [`Error::ImageDecode`] for a corrupt one; [`Error::ImageSizeMismatch`]
    /// for an image whose size differs from the first one's; [`Error::Overflow`] when the data
    /// set would not fit in memory's address space.
    pub fn load(root: &Path, channels: Channels, normalization: &Normalization) -> Result<Self> {
        let stats = normalization.per_channel(channels.count())?;
        let ImageFolderListing {
            classes,
            files,
            labels,
        } = Self::list(root)?;
        let decoded: Vec<Result<Decoded>> = files
            .par_iter()
            .map(|path| decode(path, channels))
            .collect();
        let mut pixels = Vec::with_capacity(decoded.len());
        let mut size: Option<(u32, u32)> = None;
        for (result, path) in decoded.into_iter().zip(&files) {
            let image = result?;
            match size {
                None => size = Some((image.width, image.height)),
                Some((width, height)) if (width, height) != (image.width, image.height) => {
                    return Err(Error::ImageSizeMismatch {
                        path: path.clone(),
                        reference: files[0].clone(),
                        width,
                        height,
                        got_width: image.width,
                        got_height: image.height,
                    });
                }
                Some(_) => {}
            }
            pixels.push(image.pixels);
        }
        let (width, height) = size.expect("list() returns at least one file");
        let (n, c, h, w) = (
            pixels.len(),
            channels.count(),
            height as usize,
            width as usize,
        );
        [n, c, h, w]
            .iter()
            .try_fold(std::mem::size_of::<f32>(), |acc, &d| acc.checked_mul(d))
            .filter(|&bytes| bytes <= isize::MAX as usize)
            .ok_or(Error::Overflow {
                what: "the size of the image folder's data set",
            })?;
        let mut images = Array4::<f32>::zeros((n, c, h, w));
        images
            .axis_iter_mut(Axis(0))
            .into_par_iter()
            .zip(pixels.par_iter())
            .for_each(|(out, hwc)| normalise_hwc(hwc, &stats, out));
        Ok(ImageFolder {
            dataset: ImageDataset::new(images, labels, classes)?,
            files,
        })
    }
}

struct Decoded {
    width: u32,
    height: u32,
    /// `height·width·channels` bytes, channel fastest.
    pixels: Vec<u8>,
}

fn decode(path: &Path, channels: Channels) -> Result<Decoded> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let reader = image::ImageReader::open(path)
        .map_err(io)?
        .with_guessed_format()
        .map_err(io)?;
    let image = reader.decode().map_err(|e| Error::ImageDecode {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let rgb = image.to_rgb8();
    let (width, height) = rgb.dimensions();
    let pixels = match channels {
        Channels::Rgb => rgb.into_raw(),
        Channels::Grey => rgb.pixels().map(|p| pillow_luma(p.0)).collect(),
    };
    Ok(Decoded {
        width,
        height,
        pixels,
    })
}

/// Pillow's RGB → L conversion (`libImaging/Convert.c`, `L24`), bit for bit.
fn pillow_luma([r, g, b]: [u8; 3]) -> u8 {
    let l = u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000;
    (l >> 16) as u8
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The entries of `dir` as `(file name, path)`, sorted by name (byte order).
fn read_dir_sorted(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| (e.file_name(), e.path())))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    entries.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
    Ok(entries)
}

/// `dir` and every non-hidden directory below it, not following symbolic links.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(dir.to_path_buf());
    for (name, path) in read_dir_sorted(dir)? {
        if is_hidden(&name) {
            continue;
        }
        let is_real_dir = std::fs::symlink_metadata(&path)
            .map(|m| m.file_type().is_dir())
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        if is_real_dir {
            collect_dirs(&path, out)?;
        }
    }
    Ok(())
}

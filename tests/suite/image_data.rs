//! The user's own data: `ImageFolder` (PNG/JPEG, torchvision layout) and `.npy` reading,
//! compared with arrays computed independently by Pillow and numpy
//! (`scripts/data/make_fixtures.py`, fixtures committed under `tests/data/`), and one test per
//! refusal.
#![cfg(feature = "data")]

use std::path::{Path, PathBuf};

use clustered_conv::data::{
    read_npy_dataset, Channels, FloatImages, ImageDataset, ImageFolder, Normalization, NpyOptions,
};
use clustered_conv::Error;
use ndarray::{s, Array1, Array4, ArrayD, Axis, Ix4};
use ndarray_npy::ReadNpyExt;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn folder(name: &str) -> PathBuf {
    Path::new(DATA).join("image_folder").join(name)
}

fn npy(name: &str) -> PathBuf {
    Path::new(DATA).join("npy").join(name)
}

fn load_f32(path: &Path) -> ArrayD<f32> {
    ArrayD::<f32>::read_npy(std::fs::File::open(path).unwrap()).unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The normalisations `make_fixtures.py` used.
fn rgb_norm() -> Normalization {
    Normalization::new(vec![0.5, 0.4, 0.3], vec![0.25, 0.2, 0.3]).unwrap()
}
fn grey_norm() -> Normalization {
    Normalization::new(vec![0.45], vec![0.22]).unwrap()
}

/// A fresh directory under the system temp dir, unique to this test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "clustered-conv-{}-image-data-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn is_jpeg(file: &str) -> bool {
    let f = file.to_ascii_lowercase();
    f.ends_with(".jpg") || f.ends_with(".jpeg")
}

/// Largest |a − b| over the rows of PNG files (normalised units), and over the rows of JPEG
/// files in grey levels (|a − b|·std·255), printing each JPEG file's.
fn max_diffs(got: &Array4<f32>, want: &Array4<f32>, files: &[String], std: &[f32]) -> (f32, f32) {
    assert_eq!(got.dim(), want.dim());
    let (mut png, mut jpeg) = (0.0f32, 0.0f32);
    for (i, file) in files.iter().enumerate() {
        let mut worst = 0.0f32;
        for (c, &s) in std.iter().enumerate() {
            let d = (&got.slice(s![i, c, .., ..]) - &want.slice(s![i, c, .., ..]))
                .iter()
                .fold(0.0f32, |m, v| m.max(v.abs()));
            worst = worst.max(if is_jpeg(file) { d * s * 255.0 } else { d });
        }
        if is_jpeg(file) {
            println!("  {file}: max {worst:.2} grey levels from Pillow");
            jpeg = jpeg.max(worst);
        } else {
            png = png.max(worst);
        }
    }
    (png, jpeg)
}

/// JPEG: our decoder (zune-jpeg, through `image`) and Pillow's (libjpeg-turbo) round the
/// inverse DCT and upsample subsampled chroma differently. Measured on these fixtures (see the
/// printout, zune-jpeg 0.5.15 against Pillow 13.0): identical pixels for the greyscale and the
/// 4:4:4 colour JPEG; up to 4 levels on one RGB channel (1 after grey conversion) for the 4:2:0
/// one, from chroma upsampling. Allowed: 5 levels.
const JPEG_LEVELS: f32 = 5.0;

fn check_folder(channels: Channels, norm: &Normalization, expected: &str) {
    let root = folder("mixed");
    let loaded = ImageFolder::load(&root, channels, norm).unwrap();
    let files = lines(&folder("mixed_files.txt"));
    let rel: Vec<String> = loaded
        .files
        .iter()
        .map(|f| {
            f.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    assert_eq!(rel, files, "file order (torchvision's, computed in Python)");
    assert_eq!(
        loaded.dataset.classes,
        lines(&folder("mixed_classes.txt")),
        "class order"
    );
    let labels =
        Array1::<i64>::read_npy(std::fs::File::open(folder("mixed_labels.npy")).unwrap()).unwrap();
    let labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    assert_eq!(loaded.dataset.labels, labels);
    let want = load_f32(&folder(expected))
        .into_dimensionality::<Ix4>()
        .unwrap();
    assert_eq!(
        loaded.dataset.images.dim(),
        (files.len(), channels.count(), 6, 8)
    );
    let (png, jpeg) = max_diffs(&loaded.dataset.images, &want, &files, &norm.std);
    println!("{channels:?}: max |Rust − Pillow| PNG {png:e}, JPEG {jpeg:.2} grey levels");
    assert!(png <= 2e-6, "PNG rows differ from Pillow by {png}");
    assert!(
        jpeg <= JPEG_LEVELS,
        "JPEG rows differ from Pillow by {jpeg} grey levels"
    );
}

#[test]
fn image_folder_rgb_matches_pillow() {
    check_folder(Channels::Rgb, &rgb_norm(), "mixed_rgb.npy");
}

#[test]
fn image_folder_grey_matches_pillow() {
    check_folder(Channels::Grey, &grey_norm(), "mixed_grey.npy");
}

#[test]
fn image_folder_list_skips_hidden_and_non_images() {
    let listing = ImageFolder::list(&folder("mixed")).unwrap();
    assert_eq!(listing.classes, ["a_square", "b_circle", "c_nested"]);
    assert_eq!(listing.labels, [0, 0, 0, 1, 1, 1, 2, 2]);
    let names: Vec<String> = listing
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for skipped in ["notes.txt", "._grey.jpeg", "thumb.png", "x.png"] {
        assert!(!names.iter().any(|n| n == skipped), "{skipped} was listed");
    }
    assert_eq!(listing.files.len(), 8);
}

#[test]
fn image_folder_refuses_a_different_size_naming_both() {
    let err =
        ImageFolder::load(&folder("odd_size"), Channels::Rgb, &Normalization::unit()).unwrap_err();
    match &err {
        Error::ImageSizeMismatch {
            path,
            reference,
            width,
            height,
            got_width,
            got_height,
        } => {
            assert!(path.ends_with("b/wide.png"), "{path:?}");
            assert!(reference.ends_with("a/first.png"), "{reference:?}");
            assert_eq!((*width, *height, *got_width, *got_height), (8, 6, 9, 6));
        }
        other => panic!("expected ImageSizeMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("wide.png") && msg.contains("9x6") && msg.contains("8x6"),
        "{msg}"
    );
}

#[test]
fn image_folder_refuses_a_corrupt_file_naming_it() {
    let err =
        ImageFolder::load(&folder("corrupt"), Channels::Grey, &Normalization::unit()).unwrap_err();
    assert!(
        matches!(&err, Error::ImageDecode { path, .. } if path.ends_with("a/truncated.png")),
        "{err:?}"
    );
    assert!(err.to_string().contains("truncated.png"), "{err}");
}

#[test]
fn image_folder_refuses_empty_class_and_no_class() {
    let root = temp_dir("empty-class");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::copy(folder("mixed/a_square/rgb.png"), root.join("a/x.png")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(root.join("b/readme.txt"), "no images").unwrap();
    let err = ImageFolder::load(&root, Channels::Rgb, &Normalization::unit()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidImageFolder { what, .. } if what.contains(&root.join("b").display().to_string())),
        "{err:?}"
    );

    let none = temp_dir("no-class");
    std::fs::write(none.join("loose.png"), b"not in a class").unwrap();
    let err = ImageFolder::load(&none, Channels::Rgb, &Normalization::unit()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidImageFolder { what, .. } if what.contains("no class")),
        "{err:?}"
    );

    let missing = none.join("does-not-exist");
    let err = ImageFolder::list(&missing).unwrap_err();
    assert!(
        matches!(&err, Error::Io { path, .. } if path == &missing),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&none);
}

#[test]
fn normalization_refuses_bad_std_mean_and_channel_count() {
    for std in [0.0, -0.1, f32::NAN, f32::INFINITY] {
        let err = Normalization::new(vec![0.5], vec![std]).unwrap_err();
        assert!(
            matches!(err, Error::InvalidNormalization { .. }),
            "{std}: {err:?}"
        );
    }
    let err = Normalization::new(vec![f32::NAN], vec![1.0]).unwrap_err();
    assert!(err.to_string().contains("mean[0]"), "{err}");
    // A field set by hand is checked when applied, naming the channel.
    let bad = Normalization {
        mean: vec![0.5, 0.5, 0.5],
        std: vec![0.2, 0.0, 0.2],
    };
    let err = ImageFolder::load(&folder("mixed"), Channels::Rgb, &bad).unwrap_err();
    assert!(err.to_string().contains("std[1] = 0"), "{err}");
    // Two values for three channels.
    let two = Normalization::new(vec![0.5, 0.5], vec![0.2, 0.2]).unwrap();
    let err = ImageFolder::load(&folder("mixed"), Channels::Rgb, &two).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidNormalization { what } if what.contains("2 values") && what.contains("3 channel")),
        "{err:?}"
    );
    assert!(Normalization::new(vec![0.5, 0.4], vec![0.1, 0.2, 0.3]).is_err());
}

#[test]
fn dataset_new_and_batch() {
    let images = Array4::from_shape_fn((3, 2, 2, 2), |(n, c, y, x)| {
        (n * 8 + c * 4 + y * 2 + x) as f32
    });
    let data =
        ImageDataset::new(images.clone(), vec![1, 0, 1], vec!["a".into(), "b".into()]).unwrap();
    assert_eq!(
        (
            data.len(),
            data.channels(),
            data.image_size(),
            data.num_classes()
        ),
        (3, 2, (2, 2), 2)
    );
    let (x, y) = data.batch(&[2, 0, 2]).unwrap();
    assert_eq!(y, [1, 1, 1]);
    assert_eq!(x.index_axis(Axis(0), 0), images.index_axis(Axis(0), 2));
    assert_eq!(x.index_axis(Axis(0), 1), images.index_axis(Axis(0), 0));
    assert!(matches!(
        data.batch(&[3]),
        Err(Error::RowOutOfRange { row: 3, len: 3 })
    ));
    assert!(matches!(
        ImageDataset::new(images.clone(), vec![0, 0], vec!["a".into()]),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        ImageDataset::new(images, vec![0, 2, 0], vec!["a".into(), "b".into()]),
        Err(Error::LabelOutOfRange {
            row: 1,
            label: 2,
            classes: 2
        })
    ));
}

fn assert_close(got: &Array4<f32>, want: &ArrayD<f32>, tol: f32) {
    assert_eq!(got.shape(), want.shape());
    let worst = got
        .iter()
        .zip(want.iter())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= tol, "max difference {worst} > {tol}");
}

#[test]
fn npy_u8_images_are_normalised_per_channel_as_numpy() {
    let options = NpyOptions {
        normalization: Normalization::new(vec![0.3, 0.6], vec![0.2, 0.5]).unwrap(),
        ..NpyOptions::default()
    };
    for labels in ["labels_i64.npy", "labels_i32.npy", "labels_u8.npy"] {
        let data = read_npy_dataset(&npy("images_u8.npy"), &npy(labels), &options).unwrap();
        assert_close(
            &data.images,
            &load_f32(&npy("expected_u8_normalised.npy")),
            2e-6,
        );
        assert_eq!(data.labels, [2, 0, 1, 2], "{labels}");
        assert_eq!(data.classes, ["0", "1", "2"]);
    }
}

#[test]
fn npy_float_images_are_taken_as_they_are() {
    let options = NpyOptions {
        // Ignored for floats under FloatImages::Normalized (the default).
        normalization: Normalization::new(vec![0.3], vec![0.2]).unwrap(),
        classes: Some(vec!["x".into(), "y".into(), "z".into()]),
        ..NpyOptions::default()
    };
    let f32s = load_f32(&npy("images_f32.npy"));
    for file in [
        "images_f32.npy",
        "images_f32_fortran.npy",
        "images_f32_big_endian.npy",
    ] {
        let data = read_npy_dataset(&npy(file), &npy("labels_i64.npy"), &options).unwrap();
        assert_close(&data.images, &f32s, 0.0);
        assert!(data.images.is_standard_layout(), "{file}");
        assert_eq!(data.classes, ["x", "y", "z"]);
    }
    let data = read_npy_dataset(&npy("images_f64.npy"), &npy("labels_i64.npy"), &options).unwrap();
    assert_close(
        &data.images,
        &load_f32(&npy("expected_f64_as_f32.npy")),
        0.0,
    );

    // Asked to: float pixels in [0, 1] get (x - mean) / std.
    let unit = NpyOptions {
        float_images: FloatImages::Unit,
        ..options.clone()
    };
    let data = read_npy_dataset(&npy("images_f32.npy"), &npy("labels_i64.npy"), &unit).unwrap();
    assert_close(&data.images, &f32s.mapv(|v| (v - 0.3) / 0.2), 1e-6);
    let bytes = NpyOptions {
        float_images: FloatImages::Bytes,
        ..options
    };
    let data = read_npy_dataset(&npy("images_f32.npy"), &npy("labels_i64.npy"), &bytes).unwrap();
    assert_close(&data.images, &f32s.mapv(|v| (v / 255.0 - 0.3) / 0.2), 1e-6);
}

/// An `.npy` file as `np.save` writes it (version 1.0).
fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    bytes
}

fn npy_err(images: &str, labels: &str, options: &NpyOptions) -> (PathBuf, String) {
    match read_npy_dataset(&npy(images), &npy(labels), options).unwrap_err() {
        Error::InvalidNpy { path, what } => (path, what),
        other => panic!("{images} + {labels}: expected InvalidNpy, got {other:?}"),
    }
}

#[test]
fn npy_refusals_name_the_file_and_the_problem() {
    let o = NpyOptions::default();
    let (path, what) = npy_err("images_f32.npy", "labels_short.npy", &o);
    assert!(path.ends_with("labels_short.npy"));
    assert!(
        what.contains("3 labels") && what.contains("4 images"),
        "{what}"
    );

    let (path, what) = npy_err("images_rank3.npy", "labels_i64.npy", &o);
    assert!(path.ends_with("images_rank3.npy"));
    assert!(what.contains("4-D") && what.contains("[4, 3, 5]"), "{what}");

    let (path, what) = npy_err("images_f32.npy", "labels_rank2.npy", &o);
    assert!(path.ends_with("labels_rank2.npy"));
    assert!(what.contains("1-D") && what.contains("[2, 2]"), "{what}");

    let (_, what) = npy_err("images_f32.npy", "labels_negative.npy", &o);
    assert!(what.contains("label 2 is negative (-1)"), "{what}");

    let (_, what) = npy_err("images_i16.npy", "labels_i64.npy", &o);
    assert!(
        what.contains("<i2") && what.contains("uint8, float32 or float64"),
        "{what}"
    );

    let (_, what) = npy_err("images_f32.npy", "images_f32.npy", &o);
    assert!(what.contains("1-D"), "{what}");

    // Class names given: a label beyond them.
    let two = NpyOptions {
        classes: Some(vec!["a".into(), "b".into()]),
        ..NpyOptions::default()
    };
    let err = read_npy_dataset(&npy("images_u8.npy"), &npy("labels_i64.npy"), &two).unwrap_err();
    assert!(
        matches!(
            err,
            Error::LabelOutOfRange {
                row: 0,
                label: 2,
                classes: 2
            }
        ),
        "{err:?}"
    );

    // Bad std, applied to uint8 images.
    let bad = NpyOptions {
        normalization: Normalization {
            mean: vec![0.5],
            std: vec![-1.0],
        },
        ..NpyOptions::default()
    };
    let err = read_npy_dataset(&npy("images_u8.npy"), &npy("labels_i64.npy"), &bad).unwrap_err();
    assert!(matches!(err, Error::InvalidNormalization { .. }), "{err:?}");
}

#[test]
fn npy_refuses_truncated_lying_and_non_finite_files() {
    let dir = temp_dir("npy-hostile");
    let good = std::fs::read(npy("images_f32.npy")).unwrap();
    // Truncated data.
    std::fs::write(dir.join("short.npy"), &good[..good.len() - 4]).unwrap();
    let err = read_npy_dataset(
        &dir.join("short.npy"),
        &npy("labels_i64.npy"),
        &NpyOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("needs 480"), "{err}");
    // Headers announcing huge shapes over a few bytes: refused before any allocation.
    for shape in ["(4000000000000, 2, 3, 5)", "(4294967296, 4294967296, 2, 2)"] {
        std::fs::write(dir.join("lying.npy"), npy_bytes("<f4", shape, &[0; 16])).unwrap();
        let err = read_npy_dataset(
            &dir.join("lying.npy"),
            &npy("labels_i64.npy"),
            &NpyOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidNpy { what, .. } if what.contains("holds 16 bytes")),
            "{shape}: {err:?}"
        );
    }
    // Not an npy file at all.
    std::fs::write(dir.join("text.npy"), b"hello").unwrap();
    let err = read_npy_dataset(
        &dir.join("text.npy"),
        &npy("labels_i64.npy"),
        &NpyOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidNpy { .. }), "{err:?}");
    // A NaN pixel.
    let mut nan = good.clone();
    let at = nan.len() - 4 * 7;
    nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(dir.join("nan.npy"), &nan).unwrap();
    let err = read_npy_dataset(
        &dir.join("nan.npy"),
        &npy("labels_i64.npy"),
        &NpyOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                what: "images",
                index: 113
            }
        ),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

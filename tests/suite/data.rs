//! The IDX reader and Fashion-MNIST loading: the vendored slice, the full Debian data when
//! installed, and one test per way a file is rejected.
#![cfg(feature = "data")]

use std::io::{Read, Write};
use std::path::PathBuf;

use clustered_conv::data::{read_idx, DataSource, FashionMnist, LabelledImages, MAX_IDX_BYTES};
use clustered_conv::Error;

/// The 6,000 / 1,000-image slice vendored in this repository.
const VENDORED_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/fashion-mnist-slice");
use sha2::{Digest, Sha256};

/// A fresh directory under the system temp dir, unique to this test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("clustered-conv-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    raw
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[test]
fn vendored_slice_is_intact_and_loads() {
    let dir = PathBuf::from(VENDORED_DIR);
    let expected = [
        (
            "train-images-idx3-ubyte",
            "6dded81672539b5d148c1a85358069d1808c316dc6f6c0abfd12ba3ced5dd394",
        ),
        (
            "train-labels-idx1-ubyte",
            "d7c464914ae4b919728c5c99c3cdde5a0259febf1e99ddc6927a15768731d7dc",
        ),
        (
            "t10k-images-idx3-ubyte",
            "7a6d8e07ea021ec5bc73135ebd0a5770799557ec6f8242d8749c4f32a3cf4643",
        ),
        (
            "t10k-labels-idx1-ubyte",
            "b40abac7ec8228f434940f579deb7cf7b6e3103b5274cb91d1545771f5ef1c8b",
        ),
    ];
    for (name, hash) in expected {
        assert_eq!(
            sha256(&gunzip(&dir.join(format!("{name}.gz")))),
            hash,
            "{name}"
        );
    }
    let (train, test) = FashionMnist::load_dir(&dir).unwrap();
    assert_eq!(train.images.dim(), (6000, 28, 28));
    assert_eq!(test.images.dim(), (1000, 28, 28));
    // Independent read of the first image: header 16 bytes, then row-major pixels.
    let raw = gunzip(&dir.join("train-images-idx3-ubyte.gz"));
    assert_eq!(train.images.as_slice().unwrap()[..784], raw[16..16 + 784]);
    let labels = gunzip(&dir.join("t10k-labels-idx1-ubyte.gz"));
    assert_eq!(test.labels.as_slice().unwrap(), &labels[8..]);
    // Every class is present in both splits.
    for split in [&train, &test] {
        let mut counts = [0usize; 10];
        for &l in &split.labels {
            counts[usize::from(l)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }
}

#[test]
fn full_debian_data_matches_the_published_hashes() {
    let dir = PathBuf::from(FashionMnist::DEBIAN_DIR);
    if !dir.join("train-images-idx3-ubyte.gz").is_file() {
        eprintln!(
            "skipped: {} not installed (apt-get install dataset-fashion-mnist)",
            dir.display()
        );
        return;
    }
    for (name, hash) in [
        (
            "train-images-idx3-ubyte",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        (
            "train-labels-idx1-ubyte",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        (
            "t10k-images-idx3-ubyte",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        (
            "t10k-labels-idx1-ubyte",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ] {
        assert_eq!(
            sha256(&gunzip(&dir.join(format!("{name}.gz")))),
            hash,
            "{name}"
        );
    }
    let data = FashionMnist::load(Some(&dir), None).unwrap();
    assert_eq!(data.train.images.dim(), (60_000, 28, 28));
    assert_eq!(data.test.labels.len(), 10_000);
    assert_eq!(data.source, DataSource::Explicit(dir));
}

#[test]
fn raw_and_gzipped_files_read_the_same() {
    let bytes = idx_bytes(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&bytes).unwrap();
    let gz = gz.finish().unwrap();
    let a = read_idx(&bytes).unwrap();
    assert_eq!(a.dims, vec![2, 3]);
    assert_eq!(a.data, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(read_idx(&gz).unwrap(), a);
    // A directory of raw files loads like one of gzipped files.
    let dir = temp_dir("raw");
    let src = PathBuf::from(VENDORED_DIR);
    for name in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(dir.join(name), gunzip(&src.join(format!("{name}.gz")))).unwrap();
    }
    assert_eq!(
        FashionMnist::load_dir(&dir).unwrap(),
        FashionMnist::load_dir(&src).unwrap()
    );
    let located = FashionMnist::load(Some(&dir), None).unwrap();
    assert_eq!(located.source, DataSource::Explicit(dir.clone()));
    std::fs::remove_dir_all(dir).unwrap();
}

fn idx_error(bytes: &[u8]) -> &'static str {
    match read_idx(bytes) {
        Err(Error::InvalidIdx { what, .. }) => what,
        other => panic!("expected InvalidIdx, got {other:?}"),
    }
}

#[test]
fn malformed_idx_is_rejected_without_panicking() {
    let good = idx_bytes(&[2, 2], &[1, 2, 3, 4]);
    assert_eq!(idx_error(&good[..3]), "header length");
    assert_eq!(idx_error(&good[..6]), "header length");
    let mut bad = good.clone();
    bad[0] = 8;
    assert_eq!(idx_error(&bad), "magic (first two bytes)");
    let mut bad = good.clone();
    bad[2] = 0x0d; // float
    assert_eq!(idx_error(&bad), "element type (0x08 = unsigned byte)");
    let mut bad = good.clone();
    bad[3] = 0;
    assert_eq!(idx_error(&bad), "number of dimensions (1 to 4)");
    // Truncated payload and trailing garbage.
    assert_eq!(
        idx_error(&good[..good.len() - 1]),
        "payload length (product of the dimensions)"
    );
    let mut long = good.clone();
    long.push(0);
    assert_eq!(
        idx_error(&long),
        "payload length (product of the dimensions)"
    );
    // Claimed sizes far beyond the limit are refused before any allocation.
    assert_eq!(
        idx_error(&idx_bytes(&[u32::MAX, u32::MAX, 4], &[])),
        "element count"
    );
    assert!(u64::from(u32::MAX) * 2 > MAX_IDX_BYTES);
    assert_eq!(idx_error(&idx_bytes(&[u32::MAX, 2], &[])), "element count");
    // A corrupt gzip stream.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&good).unwrap();
    let gz = gz.finish().unwrap();
    match read_idx(&gz[..gz.len() / 2]) {
        Err(err @ Error::CorruptGzip { .. }) => {
            // The decoder's own error is kept as the source.
            let source = std::error::Error::source(&err).expect("the decoder's error");
            assert!(err.to_string().contains(&source.to_string()), "{err}");
        }
        other => panic!("expected CorruptGzip, got {other:?}"),
    }
}

#[test]
fn inconsistent_files_and_missing_data_are_reported() {
    let dir = temp_dir("inconsistent");
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.join(name), bytes).unwrap();
    let images = |n: u32| idx_bytes(&[n, 28, 28], &vec![7; n as usize * 784]);
    write("train-images-idx3-ubyte", images(3));
    write("train-labels-idx1-ubyte", idx_bytes(&[3], &[0, 1, 2]));
    write("t10k-images-idx3-ubyte", images(2));
    write("t10k-labels-idx1-ubyte", idx_bytes(&[2], &[9, 3]));
    assert!(FashionMnist::load_dir(&dir).is_ok());
    write("t10k-labels-idx1-ubyte", idx_bytes(&[2], &[9, 10]));
    assert!(matches!(
        FashionMnist::load_dir(&dir),
        Err(Error::InvalidIdx {
            what: "label value",
            ..
        })
    ));
    write("t10k-labels-idx1-ubyte", idx_bytes(&[3], &[1, 2, 3]));
    assert!(matches!(
        FashionMnist::load_dir(&dir),
        Err(Error::InvalidIdx {
            what: "label count (one per image)",
            ..
        })
    ));
    write(
        "t10k-images-idx3-ubyte",
        idx_bytes(&[2, 14, 56], &[0; 2 * 784]),
    );
    assert!(matches!(
        FashionMnist::load_dir(&dir),
        Err(Error::InvalidIdx {
            what: "image side",
            ..
        })
    ));
    std::fs::remove_file(dir.join("t10k-images-idx3-ubyte")).unwrap();
    assert!(matches!(
        FashionMnist::load_dir(&dir),
        Err(Error::Io { .. })
    ));
    match FashionMnist::locate(Some(&dir), None) {
        Err(Error::DataNotFound { tried }) => assert_eq!(tried, vec![dir.clone()]),
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn batches_normalise_pixels_and_refuse_rows_beyond_the_set() {
    let images = ndarray::Array3::from_shape_fn((3, 2, 2), |(n, y, x)| (n * 100 + y * 2 + x) as u8);
    let set = LabelledImages {
        images,
        labels: ndarray::Array1::from_vec(vec![7, 8, 9]),
    };
    let (x, labels) = set.batch(&[2, 0], 0.5, 0.25).unwrap();
    assert_eq!(x.dim(), (2, 1, 2, 2));
    assert_eq!(labels, vec![9, 7]);
    // Pixel 203 of image 2 at (1, 1): (203/255 − 0.5) / 0.25.
    assert!((x[[0, 0, 1, 1]] - (203.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
    assert!((x[[1, 0, 0, 0]] - (0.0 - 0.5) / 0.25).abs() < 1e-6);
    assert!(matches!(
        set.batch(&[0, 3], 0.5, 0.25),
        Err(Error::RowOutOfRange { row: 3, len: 3 })
    ));
}

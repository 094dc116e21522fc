//! `inspect --png`: each codebook's centroids as a grid (most- to least-used, like the paper's
//! Fig. 5) and a histogram of how many kernels use each centroid.

use std::path::{Path, PathBuf};

use clustered_conv::io::{write_atomic, CompressedModel};
use clustered_conv::{CompressedLayer, Error, KernelCodebook};
use ndarray::{Array2, ArrayView2};

/// Pixels per kernel element in the centroid grid.
const CELL: usize = 8;
/// Pixels between centroids.
const GAP: usize = 2;
const HISTOGRAM_HEIGHT: usize = 240;
const HISTOGRAM_WIDTH: usize = 1024;

/// Writes `codebook<c>_centroids.png` and `codebook<c>_usage.png` for every codebook into
/// `dir` (created if missing) and returns their paths.
pub fn write_all(model: &CompressedModel, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (c, codebook) in model.network.codebooks().iter().enumerate() {
        let indices: Vec<Array2<u32>> = model
            .network
            .layers()
            .iter()
            .filter_map(|layer| match layer {
                CompressedLayer::Clustered {
                    codebook, layer, ..
                } if *codebook == c => Some(layer.indices().to_array()),
                _ => None,
            })
            .collect();
        let views: Vec<ArrayView2<u32>> = indices.iter().map(|m| m.view()).collect();
        let usage = codebook.usage(&views)?.per_centroid;
        let mut order: Vec<usize> = (0..usage.len()).collect();
        order.sort_by_key(|&j| std::cmp::Reverse(usage[j]));
        let grid = dir.join(format!("codebook{c}_centroids.png"));
        let (w, h, rgb) = centroid_grid(codebook, &order);
        write_atomic(&grid, &encode_png(&grid, w, h, &rgb)?)?;
        let hist = dir.join(format!("codebook{c}_usage.png"));
        let sorted: Vec<u64> = order.iter().map(|&j| usage[j]).collect();
        let (w, h, rgb) = histogram(&sorted);
        write_atomic(&hist, &encode_png(&hist, w, h, &rgb)?)?;
        written.extend([grid, hist]);
    }
    Ok(written)
}

/// The centroids in `order`, each scaled by its own largest magnitude: red positive, blue
/// negative, white zero.
fn centroid_grid(codebook: &KernelCodebook<f32>, order: &[usize]) -> (usize, usize, Vec<u8>) {
    let (kh, kw) = codebook.kernel_size();
    let cols = (order.len() as f64).sqrt().ceil() as usize;
    let rows = order.len().div_ceil(cols);
    let (tile_h, tile_w) = (kh * CELL + GAP, kw * CELL + GAP);
    let (width, height) = (cols * tile_w + GAP, rows * tile_h + GAP);
    let mut rgb = vec![160u8; width * height * 3];
    for (slot, &j) in order.iter().enumerate() {
        let centroid = codebook.centroids().index_axis(ndarray::Axis(0), j);
        let peak = centroid.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (x0, y0) = (GAP + (slot % cols) * tile_w, GAP + (slot / cols) * tile_h);
        for ((r, c), &v) in centroid.indexed_iter() {
            let colour = diverging(if peak > 0.0 { v / peak } else { 0.0 });
            for y in y0 + r * CELL..y0 + (r + 1) * CELL {
                for x in x0 + c * CELL..x0 + (c + 1) * CELL {
                    rgb[(y * width + x) * 3..][..3].copy_from_slice(&colour);
                }
            }
        }
    }
    (width, height, rgb)
}

/// `t ∈ [−1, 1]` → blue … white … red.
fn diverging(t: f32) -> [u8; 3] {
    let fade = |a: f32| (255.0 * (1.0 - a.clamp(0.0, 1.0))).round() as u8;
    if t >= 0.0 {
        [255, fade(t), fade(t)]
    } else {
        [fade(-t), fade(-t), 255]
    }
}

/// One bar per centroid (already sorted), height proportional to its count.
fn histogram(counts: &[u64]) -> (usize, usize, Vec<u8>) {
    let bar = (HISTOGRAM_WIDTH / counts.len().max(1)).max(1);
    let width = bar * counts.len().max(1);
    let height = HISTOGRAM_HEIGHT;
    let mut rgb = vec![255u8; width * height * 3];
    let peak = counts.iter().copied().max().unwrap_or(0).max(1);
    for (j, &n) in counts.iter().enumerate() {
        let h = ((n as f64 / peak as f64) * (height - 1) as f64).round() as usize;
        for y in height - h..height {
            // A one-pixel gap between bars when they are wide enough to show it.
            let right = if bar >= 3 {
                (j + 1) * bar - 1
            } else {
                (j + 1) * bar
            };
            for x in j * bar..right {
                rgb[(y * width + x) * 3..][..3].copy_from_slice(&[60, 60, 60]);
            }
        }
    }
    (width, height, rgb)
}

fn encode_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let as_error = |e: png::EncodingError| Error::Write {
        path: path.to_path_buf(),
        source: match e {
            png::EncodingError::IoError(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        },
    };
    let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(as_error)?;
    writer.write_image_data(rgb).map_err(as_error)?;
    writer.finish().map_err(as_error)?;
    Ok(out)
}

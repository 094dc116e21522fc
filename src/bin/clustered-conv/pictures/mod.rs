//! Pictures drawn with `plotters`, each written as PNG and SVG: for `inspect --png`, each
//! codebook's centroids as heat maps (most- to least-used, like the paper's Fig. 5) and a bar
//! chart of how many kernels use each centroid; for the commands that choose K or fine-tune,
//! relative reconstruction error against K and accuracy over fine-tuning epochs.
//!
//! Text in the PNGs is drawn with a subset of DejaVu Sans embedded in the binary
//! (`font/DejaVuSans-subset.ttf`, licence beside it) through plotters' `ab_glyph` backend, so
//! no system font is needed; SVG text names the `sans-serif` family and is laid out by the
//! viewer.

mod charts;
mod codebook;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use clustered_conv::io::{write_atomic, CompressedModel};
use clustered_conv::{CompressedLayer, Error};
use ndarray::{Array2, ArrayView2};
use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, DrawingBackend, IntoDrawingArea, SVGBackend};
use plotters::style::FontStyle;

pub use charts::{accuracy_curve, error_vs_k};

/// The font family every picture's text uses.
const FAMILY: &str = "sans-serif";
/// DejaVu Sans cut down to Latin-1 and a few symbols (× − – … ≈ ≤ ≥).
const FONT: &[u8] = include_bytes!("font/DejaVuSans-subset.ttf");

/// What a picture's drawing code returns: plotters' errors, boxed.
type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A picture that can be drawn on any plotters backend (bitmap for PNG, SVG).
trait Picture {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Draws the whole picture onto `root`, which covers `size()`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static;
}

/// Writes `codebook<c>_centroids.{png,svg}` and `codebook<c>_usage.{png,svg}` for every
/// codebook into `dir` (created if missing) and returns their paths.
pub fn write_all(model: &CompressedModel, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    create_dir(dir)?;
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
        let grid = codebook::CentroidGrid::new(c, codebook, &usage);
        written.extend(save(&grid, &dir.join(format!("codebook{c}_centroids")))?);
        let chart = codebook::UsageChart::new(c, &usage);
        written.extend(save(&chart, &dir.join(format!("codebook{c}_usage")))?);
    }
    Ok(written)
}

fn create_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Registers the embedded font with plotters once per process.
fn register_font() -> Result<(), Error> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Unsupported {
            what: "drawing text in pictures",
            reason: "the embedded font could not be read",
        })
    }
}

/// `stem` with `.extension` appended (not replacing any dot already in the file name, as a
/// layer name such as `features.0` has).
fn with_suffix(stem: &Path, extension: &str) -> PathBuf {
    let mut name = OsString::from(stem.as_os_str());
    name.push(".");
    name.push(extension);
    PathBuf::from(name)
}

/// Draws `picture` twice, writes `<stem>.png` and `<stem>.svg` (creating `stem`'s directory)
/// and returns their paths.
fn save(picture: &impl Picture, stem: &Path) -> Result<Vec<PathBuf>, Error> {
    register_font()?;
    if let Some(parent) = stem.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    let (width, height) = picture.size();
    let png_path = with_suffix(stem, "png");
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        picture
            .draw(&root)
            .and_then(|()| Ok(root.present()?))
            .map_err(|e| drawing_error(&png_path, e))?;
    }
    write_atomic(&png_path, &encode_png(&png_path, width, height, &rgb)?)?;
    let svg_path = with_suffix(stem, "svg");
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        picture
            .draw(&root)
            .and_then(|()| Ok(root.present()?))
            .map_err(|e| drawing_error(&svg_path, e))?;
    }
    write_atomic(&svg_path, svg.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

fn drawing_error(path: &Path, e: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    }
}

/// The bitmap backend's RGB buffer as a PNG file's bytes.
fn encode_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let as_error = |e: png::EncodingError| Error::Write {
        path: path.to_path_buf(),
        source: match e {
            png::EncodingError::IoError(e) => e,
            other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
        },
    };
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(as_error)?;
    writer.write_image_data(rgb).map_err(as_error)?;
    writer.finish().map_err(as_error)?;
    Ok(out)
}

/// `t ∈ [−1, 1]` → blue … white … red (values outside are clamped).
fn diverging(t: f64) -> plotters::style::RGBColor {
    let fade = |a: f64| (255.0 * (1.0 - a.clamp(0.0, 1.0))).round() as u8;
    if t >= 0.0 {
        plotters::style::RGBColor(255, fade(t), fade(t))
    } else {
        plotters::style::RGBColor(fade(-t), fade(-t), 255)
    }
}

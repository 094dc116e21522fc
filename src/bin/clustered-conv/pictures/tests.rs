//! The pictures are decoded again: PNG size and content (not blank, the colour map's
//! extremes where they belong, text drawn with the embedded font) and the SVG's text.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::codebook::{CentroidGrid, UsageChart, TITLE_HEIGHT};
use super::{accuracy_curve, error_vs_k, save, Picture};
use clustered_conv::Error;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "clustered-conv-pictures-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// (width, height, RGB bytes) of a PNG file.
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{path:?}");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn pixel(png: &(u32, u32, Vec<u8>), (x, y): (i32, i32)) -> [u8; 3] {
    let at = (y as usize * png.0 as usize + x as usize) * 3;
    [png.2[at], png.2[at + 1], png.2[at + 2]]
}

fn distinct_colours(rgb: &[u8]) -> usize {
    rgb.chunks(3).collect::<HashSet<_>>().len()
}

/// Dark pixels (text, axes) in rows `rows` of the picture.
fn dark_pixels(png: &(u32, u32, Vec<u8>), rows: std::ops::Range<u32>) -> usize {
    let width = png.0 as usize * 3;
    png.2[rows.start as usize * width..rows.end as usize * width]
        .chunks(3)
        .filter(|p| p.iter().all(|&v| v < 100))
        .count()
}

/// Writes `picture` under `dir/name` and returns the decoded PNG and the SVG text.
fn render(picture: &impl Picture, dir: &Path, name: &str) -> ((u32, u32, Vec<u8>), String) {
    let written = save(picture, &dir.join(name)).unwrap();
    assert_eq!(
        written,
        [
            dir.join(format!("{name}.png")),
            dir.join(format!("{name}.svg"))
        ]
    );
    let png = decode(&written[0]);
    assert_eq!((png.0, png.1), picture.size());
    (png, std::fs::read_to_string(&written[1]).unwrap())
}

/// How often `text` is the whole content of an SVG `<text>` element.
fn text_elements(svg: &str, text: &str) -> usize {
    svg.split("</text>")
        .filter(|chunk| chunk.rsplit('>').next().is_some_and(|t| t.trim() == text))
        .count()
}

/// Five 3×3 centroids with distinct usage counts; the most negative element (−2.0) is in
/// the least-used centroid, the most positive (+1.5) in the most-used one.
fn five_centroids() -> Vec<(Vec<f32>, u64)> {
    let mut tiles: Vec<(Vec<f32>, u64)> = (0..5)
        .map(|j| {
            (
                (0..9).map(|i| (i as f32 - 4.0) * 0.1 * j as f32).collect(),
                0,
            )
        })
        .collect();
    tiles[0].0[4] = -2.0; // centre of centroid 0
    tiles[3].0[2] = 1.5; // top right of centroid 3
    for (tile, count) in tiles.iter_mut().zip([3, 40, 17, 123, 8]) {
        tile.1 = count;
    }
    tiles
}

#[test]
fn centroid_grid_colours_extremes_and_labels_counts() {
    let dir = scratch("grid");
    let grid = CentroidGrid::from_tiles(2, (3, 3), five_centroids());
    let (png, svg) = render(&grid, &dir, "grid");
    assert!(
        distinct_colours(&png.2) >= 20,
        "{}",
        distinct_colours(&png.2)
    );
    // Ranks by usage: 123 (centroid 3) first, 3 (centroid 0) last.
    let [r, g, b] = pixel(&png, grid.cell_centre(0, 0, 2));
    assert!(
        r > 200 && g < 80 && b < 80,
        "most positive is not red: {r} {g} {b}"
    );
    let [r, g, b] = pixel(&png, grid.cell_centre(4, 1, 1));
    assert!(
        b > 200 && r < 80 && g < 80,
        "most negative is not blue: {r} {g} {b}"
    );
    // Text was drawn in the PNG's title band with the embedded font.
    assert!(dark_pixels(&png, 0..TITLE_HEIGHT) > 50);
    assert!(svg.contains("codebook 2: 5 centroids (3×3), most- to least-used"));
    for count in [3, 40, 17, 123, 8] {
        assert_eq!(text_elements(&svg, &count.to_string()), 1, "count {count}");
    }
    // The colour bar's ticks run symmetrically over ±2.
    for tick in ["-2.00", "-1.00", "0.00", "1.00", "2.00"] {
        assert_eq!(text_elements(&svg, tick), 1, "colour bar tick {tick}");
    }
}

#[test]
fn usage_chart_has_title_axes_and_bars() {
    let dir = scratch("usage");
    let chart = UsageChart::new(0, &[5, 90, 0, 31, 12, 12]);
    let (png, svg) = render(&chart, &dir, "usage");
    assert!(distinct_colours(&png.2) >= 5);
    let bar = |p: &&[u8]| p == &[70u8, 110, 170];
    assert!(png.2.chunks(3).filter(bar).count() > 1000, "no bars");
    assert!(svg.contains("codebook 0: kernels per centroid (150 kernels, 6 centroids)"));
    assert_eq!(text_elements(&svg, "centroid (by usage rank)"), 1);
    assert_eq!(text_elements(&svg, "kernels"), 1);
    assert!(
        text_elements(&svg, "90") + text_elements(&svg, "80") >= 1,
        "no y ticks"
    );
    assert_eq!(text_elements(&svg, "6"), 1, "no x tick for rank 6");
    assert_eq!(text_elements(&svg, "7"), 0, "a rank past the last centroid");
}

#[test]
fn degenerate_codebooks_still_draw() {
    let dir = scratch("degenerate");
    // One all-zero 1×1 centroid used by no kernel: white tile, a ±0 colour bar.
    let grid = CentroidGrid::from_tiles(0, (1, 1), vec![(vec![0.0], 0)]);
    let (png, svg) = render(&grid, &dir, "zero");
    assert_eq!(pixel(&png, grid.cell_centre(0, 0, 0)), [255, 255, 255]);
    assert_eq!(text_elements(&svg, "0"), 1);
    assert!(!svg.contains("-0.0"), "a negative zero tick");
    let (_, svg) = render(&UsageChart::new(0, &[0]), &dir, "zero_usage");
    assert!(svg.contains("kernels per centroid (0 kernels, 1 centroid)"));
    // 256 centroids of 5×5: a 16×16 grid, every count written once.
    let tiles: Vec<(Vec<f32>, u64)> = (0..256)
        .map(|j| {
            (
                (0..25).map(|i| ((i * 7 + j) % 11) as f32 - 5.0).collect(),
                1000 + j as u64,
            )
        })
        .collect();
    let grid = CentroidGrid::from_tiles(1, (5, 5), tiles);
    let (png, svg) = render(&grid, &dir, "large");
    assert!(
        png.0 > 16 * 5 * 8 && png.1 > 16 * 5 * 8,
        "{}×{}",
        png.0,
        png.1
    );
    assert!((1000..1256).all(|n| text_elements(&svg, &n.to_string()) == 1));
}

#[test]
fn error_vs_k_marks_the_chosen_k() {
    let dir = scratch("error");
    let points = [(256, 0.05), (16, 0.31), (64, 0.12), (4, 0.58), (1024, 0.01)];
    let stem = dir.join("sub").join("features.3_error");
    let written = error_vs_k("features.3", &points, Some(64), &stem).unwrap();
    assert_eq!(
        written,
        [
            dir.join("sub/features.3_error.png"),
            dir.join("sub/features.3_error.svg")
        ]
    );
    let png = decode(&written[0]);
    assert_eq!((png.0, png.1), (800, 500));
    let svg = std::fs::read_to_string(&written[1]).unwrap();
    // One red triangle, and the PNG is red at its centre (both backends draw the same).
    let triangles: Vec<&str> = svg.split("fill=\"#C81E1E\" points=\"").skip(1).collect();
    assert_eq!(triangles.len(), 1, "chosen-K markers");
    let corners: Vec<i32> = triangles[0]
        .split('"')
        .next()
        .unwrap()
        .split([',', ' '])
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().unwrap())
        .collect();
    let centre = (
        (corners[0] + corners[2] + corners[4]) / 3,
        (corners[1] + corners[3] + corners[5]) / 3,
    );
    let [r, g, b] = pixel(&png, centre);
    assert!(
        r > 180 && g < 60 && b < 60,
        "marker at {centre:?} is {r} {g} {b}"
    );
    assert!(svg.contains("features.3: relative reconstruction error against K"));
    assert_eq!(text_elements(&svg, "K (centroids, log2 scale)"), 1);
    assert_eq!(text_elements(&svg, "relative reconstruction error"), 1);
    assert_eq!(text_elements(&svg, "chosen K = 64 (error 0.1200)"), 1);
    for k in ["4", "8", "16", "64", "1024"] {
        assert_eq!(text_elements(&svg, k), 1, "x tick {k}");
    }
    // Without a chosen K: no marker, no label.
    let written = error_vs_k("features.3", &points, None, &dir.join("plain")).unwrap();
    let svg = std::fs::read_to_string(&written[1]).unwrap();
    assert!(!svg.contains("chosen") && !svg.contains("C81E1E"));
}

#[test]
fn error_vs_k_rejects_bad_points() {
    let stem = scratch("error-bad").join("x");
    let bad = |points: &[(usize, f64)], chosen| error_vs_k("l", points, chosen, &stem);
    assert!(matches!(bad(&[], None), Err(Error::Empty { .. })));
    assert!(matches!(
        bad(&[(4, 0.1), (8, f64::NAN)], None),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        bad(&[(4, f64::INFINITY)], None),
        Err(Error::NonFinite { index: 0, .. })
    ));
    assert!(matches!(
        bad(&[(0, 0.1)], None),
        Err(Error::InvalidParameter { name: "K", .. })
    ));
    assert!(matches!(
        bad(&[(4, -0.1)], None),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        bad(&[(4, 0.1)], Some(8)),
        Err(Error::InvalidParameter {
            name: "chosen K",
            ..
        })
    ));
    // A single point (one tick, zero error) still draws.
    assert_eq!(bad(&[(16, 0.0)], Some(16)).unwrap().len(), 2);
}

#[test]
fn accuracy_curve_labels_axes() {
    let dir = scratch("accuracy");
    let points = [(0, 71.5), (1, 84.0), (2, 88.25), (3, 89.0)];
    let written = accuracy_curve(&points, &dir.join("acc"), "fine-tuning vgg_small").unwrap();
    let png = decode(&written[0]);
    assert_eq!((png.0, png.1), (800, 500));
    assert!(dark_pixels(&png, 0..40) > 50, "no title drawn");
    assert!(distinct_colours(&png.2) >= 5);
    let svg = std::fs::read_to_string(&written[1]).unwrap();
    assert_eq!(text_elements(&svg, "fine-tuning vgg_small"), 1);
    assert_eq!(text_elements(&svg, "epoch (0 = before fine-tuning)"), 1);
    assert_eq!(text_elements(&svg, "accuracy (%)"), 1);
    for epoch in ["0", "1", "2", "3"] {
        assert_eq!(text_elements(&svg, epoch), 1, "epoch tick {epoch}");
    }
}

#[test]
fn accuracy_curve_rejects_bad_points() {
    let stem = scratch("accuracy-bad").join("x");
    let bad = |points: &[(usize, f64)]| accuracy_curve(points, &stem, "t");
    assert!(matches!(bad(&[]), Err(Error::Empty { .. })));
    assert!(matches!(
        bad(&[(0, 50.0), (1, f64::NAN)]),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert!(matches!(
        bad(&[(0, 101.0)]),
        Err(Error::InvalidParameter { .. })
    ));
    assert_eq!(bad(&[(0, 100.0)]).unwrap().len(), 2);
}

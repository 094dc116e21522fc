//! A codebook's centroids as small heat maps in a grid, most- to least-used (like the paper's
//! Fig. 5), and a bar chart of how many kernels use each centroid.

use clustered_conv::KernelCodebook;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{diverging, DrawResult, Picture, FAMILY};

/// Height of the title band above the grid.
pub(super) const TITLE_HEIGHT: u32 = 44;
/// Pixels around the grid and between tiles.
const GAP: u32 = 12;
/// Height of the usage count under each tile.
const LABEL_HEIGHT: u32 = 16;
/// Width of the colour bar and its tick labels, right of the grid.
const BAR_WIDTH: u32 = 110;
/// Steps the colour bar is drawn in.
const BAR_STEPS: usize = 128;

/// `v` with `decimals` decimals, without the sign of a value that rounds to zero.
fn tick(v: f64, decimals: usize) -> String {
    let text = format!("{v:.decimals$}");
    match text.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => text,
    }
}

/// "1 centroid", "16 centroids".
fn centroids(n: usize) -> String {
    if n == 1 {
        "1 centroid".to_string()
    } else {
        format!("{n} centroids")
    }
}

/// Codebook `c`'s centroids, ordered by usage, on one symmetric blue–white–red scale.
pub(super) struct CentroidGrid {
    title: String,
    kernel: (usize, usize),
    /// Each centroid's row-major values and its usage count, most-used first.
    tiles: Vec<(Vec<f32>, u64)>,
    /// The largest |value| over the codebook: the colour scale runs over ±peak.
    peak: f64,
    /// Pixels per kernel element.
    cell: u32,
    cols: u32,
}

impl CentroidGrid {
    pub(super) fn new(c: usize, codebook: &KernelCodebook<f32>, usage: &[u64]) -> Self {
        let centroids = codebook.centroids();
        let tiles = (0..centroids.shape()[0])
            .map(|j| {
                let values = centroids.index_axis(ndarray::Axis(0), j);
                (values.iter().copied().collect(), usage[j])
            })
            .collect();
        Self::from_tiles(c, codebook.kernel_size(), tiles)
    }

    /// `tiles` in codebook order: (row-major values, usage count) per centroid.
    pub(super) fn from_tiles(
        c: usize,
        kernel: (usize, usize),
        mut tiles: Vec<(Vec<f32>, u64)>,
    ) -> Self {
        // Stable: equally used centroids keep codebook order.
        tiles.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let peak = tiles
            .iter()
            .flat_map(|(v, _)| v.iter())
            .fold(0f64, |m, &v| m.max(f64::from(v).abs()));
        let largest = kernel.0.max(kernel.1).max(1) as u32;
        let cols = (tiles.len() as f64).sqrt().ceil().max(1.0) as u32;
        Self {
            title: format!(
                "codebook {c}: {} ({}×{}), most- to least-used",
                centroids(tiles.len()),
                kernel.0,
                kernel.1
            ),
            kernel,
            tiles,
            peak,
            cell: (48 / largest).clamp(4, 16),
            cols,
        }
    }

    fn tile_size(&self) -> (u32, u32) {
        (
            self.kernel.1 as u32 * self.cell,
            self.kernel.0 as u32 * self.cell,
        )
    }

    /// Top-left pixel of the tile in grid position `slot`.
    fn tile_origin(&self, slot: usize) -> (i32, i32) {
        let (w, h) = self.tile_size();
        let (col, row) = (slot as u32 % self.cols, slot as u32 / self.cols);
        let x = GAP + col * (w.max(LABEL_HEIGHT * 2) + GAP);
        let y = TITLE_HEIGHT + row * (h + LABEL_HEIGHT + GAP);
        (x as i32, y as i32)
    }

    /// Centre pixel of element (`r`, `c`) of the `rank`-th most-used centroid.
    #[cfg(test)]
    pub(super) fn cell_centre(&self, rank: usize, r: usize, c: usize) -> (i32, i32) {
        let (x, y) = self.tile_origin(rank);
        let (cell, half) = (self.cell as i32, self.cell as i32 / 2);
        (x + c as i32 * cell + half, y + r as i32 * cell + half)
    }

    fn grid_width(&self) -> u32 {
        let (w, _) = self.tile_size();
        GAP + self.cols * (w.max(LABEL_HEIGHT * 2) + GAP)
    }

    fn draw_tiles<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        let (w, h) = self.tile_size();
        let cell = self.cell as i32;
        let label =
            TextStyle::from((FAMILY, 12).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        for (slot, (values, count)) in self.tiles.iter().enumerate() {
            let (x0, y0) = self.tile_origin(slot);
            for (i, &v) in values.iter().enumerate() {
                let (r, c) = ((i / self.kernel.1) as i32, (i % self.kernel.1) as i32);
                let colour = diverging(f64::from(v) / self.peak.max(f64::MIN_POSITIVE));
                let corner = (x0 + c * cell, y0 + r * cell);
                area.draw(&Rectangle::new(
                    [corner, (corner.0 + cell, corner.1 + cell)],
                    colour.filled(),
                ))?;
            }
            let frame = [(x0 - 1, y0 - 1), (x0 + w as i32, y0 + h as i32)];
            area.draw(&Rectangle::new(frame, RGBColor(150, 150, 150)))?;
            let under = (x0 + w as i32 / 2, y0 + h as i32 + 2);
            area.draw(&Text::new(count.to_string(), under, label.clone()))?;
        }
        Ok(())
    }

    /// The colour bar: the scale from −peak to +peak with tick labels.
    fn draw_colour_bar<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        // An all-zero codebook is drawn white on a ±1 scale.
        let peak = if self.peak > 0.0 { self.peak } else { 1.0 };
        let decimals = (2.0 - peak.log10().floor()).clamp(0.0, 8.0) as usize;
        let mut chart = ChartBuilder::on(area)
            .margin_top(TITLE_HEIGHT)
            .margin_bottom(GAP)
            .margin_left(GAP)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0f64..1f64, -peak..peak)?;
        let step = 2.0 * peak / BAR_STEPS as f64;
        chart.draw_series((0..BAR_STEPS).map(|i| {
            let low = -peak + i as f64 * step;
            let colour = diverging((low + step / 2.0) / peak);
            Rectangle::new([(0.0, low), (1.0, low + step)], colour.filled())
        }))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_labels(7)
            .y_label_formatter(&|v| tick(*v, decimals))
            .label_style((FAMILY, 12))
            .draw()?;
        Ok(())
    }
}

impl Picture for CentroidGrid {
    fn size(&self) -> (u32, u32) {
        let rows = (self.tiles.len() as u32).div_ceil(self.cols).max(1);
        let (_, h) = self.tile_size();
        let height = TITLE_HEIGHT + rows * (h + LABEL_HEIGHT + GAP) + GAP;
        ((self.grid_width() + BAR_WIDTH).max(480), height.max(240))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let title =
            TextStyle::from((FAMILY, 18).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(
            self.title.clone(),
            (GAP as i32, TITLE_HEIGHT as i32 / 2),
            title,
        ))?;
        let (grid, bar) = root.split_horizontally(self.grid_width());
        self.draw_tiles(&grid)?;
        let (bar, _) = bar.split_horizontally(BAR_WIDTH);
        self.draw_colour_bar(&bar)
    }
}

/// How many kernels use each centroid, most-used first.
pub(super) struct UsageChart {
    title: String,
    /// Usage counts sorted descending.
    counts: Vec<u64>,
}

impl UsageChart {
    pub(super) fn new(c: usize, usage: &[u64]) -> Self {
        let mut counts = usage.to_vec();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let total: u64 = counts.iter().sum();
        Self {
            title: format!(
                "codebook {c}: kernels per centroid ({total} kernels, {})",
                centroids(counts.len())
            ),
            counts,
        }
    }
}

impl Picture for UsageChart {
    fn size(&self) -> (u32, u32) {
        (960, 480)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let n = self.counts.len().max(1) as u32;
        let top = self.counts.first().copied().unwrap_or(0).max(1);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 20))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d((1..n).into_segmented(), 0..top + top.div_ceil(10))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(n.min(16) as usize)
            .x_desc("centroid (by usage rank)")
            .y_desc("kernels")
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        chart.draw_series(self.counts.iter().enumerate().map(|(i, &count)| {
            let rank = i as u32 + 1;
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(rank), 0),
                    (SegmentValue::Exact(rank + 1), count),
                ],
                RGBColor(70, 110, 170).filled(),
            );
            bar.set_margin(0, 0, 1, 1);
            bar
        }))?;
        Ok(())
    }
}

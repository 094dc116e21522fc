//! Line charts: a layer's relative reconstruction error against K, and accuracy over
//! fine-tuning epochs.

use std::path::{Path, PathBuf};

use clustered_conv::Error;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{save, DrawResult, Picture, FAMILY};

const LINE: RGBColor = RGBColor(40, 90, 160);
const CHOSEN: RGBColor = RGBColor(200, 30, 30);

/// Writes `<stem>.png` and `<stem>.svg`: `layer`'s relative reconstruction error (y) against
/// the codebook size K (x, log2 scale), one marker per measured K joined by a line, with
/// `chosen` (which must be one of the measured K) marked by a red triangle and a label.
///
/// Errors: `points` empty ([`Error::Empty`]); a K of 0 or an error that is negative
/// ([`Error::InvalidParameter`]) or not finite ([`Error::NonFinite`]); `chosen` not among the
/// points; or the files cannot be written.
pub fn error_vs_k(
    layer: &str,
    points: &[(usize, f64)],
    chosen: Option<usize>,
    stem: &Path,
) -> Result<Vec<PathBuf>, Error> {
    check_points(points, "relative reconstruction errors")?;
    if let Some((index, _)) = points.iter().enumerate().find(|(_, &(k, _))| k == 0) {
        return Err(Error::InvalidParameter {
            name: "K",
            value: points[index].0 as f64,
            expected: "at least 1",
        });
    }
    if points.iter().any(|&(_, e)| e < 0.0) {
        return Err(Error::InvalidParameter {
            name: "relative reconstruction error",
            value: points.iter().map(|p| p.1).fold(0.0, f64::min),
            expected: "at least 0",
        });
    }
    let chosen = match chosen {
        Some(k) => match points.iter().find(|p| p.0 == k) {
            Some(&point) => Some(point),
            None => {
                return Err(Error::InvalidParameter {
                    name: "chosen K",
                    value: k as f64,
                    expected: "one of the measured K",
                })
            }
        },
        None => None,
    };
    let mut sorted = points.to_vec();
    sorted.sort_by_key(|p| p.0);
    let chart = ErrorVsK {
        title: format!("{layer}: relative reconstruction error against K"),
        points: sorted,
        chosen,
    };
    save(&chart, stem)
}

/// Writes `<stem>.png` and `<stem>.svg`: accuracy in percent (y) over fine-tuning epochs (x;
/// epoch 0 is before fine-tuning), titled `title`.
///
/// Errors: `points` empty ([`Error::Empty`]); an accuracy that is not finite
/// ([`Error::NonFinite`]) or outside 0 to 100 ([`Error::InvalidParameter`]); or the files
/// cannot be written.
pub fn accuracy_curve(
    points: &[(usize, f64)],
    stem: &Path,
    title: &str,
) -> Result<Vec<PathBuf>, Error> {
    check_points(points, "accuracies")?;
    if let Some(&(_, a)) = points.iter().find(|p| !(0.0..=100.0).contains(&p.1)) {
        return Err(Error::InvalidParameter {
            name: "accuracy (%)",
            value: a,
            expected: "between 0 and 100",
        });
    }
    let mut sorted = points.to_vec();
    sorted.sort_by_key(|p| p.0);
    save(
        &AccuracyCurve {
            title: title.to_string(),
            points: sorted,
        },
        stem,
    )
}

/// Non-empty, and every y finite.
fn check_points(points: &[(usize, f64)], what: &'static str) -> Result<(), Error> {
    if points.is_empty() {
        return Err(Error::Empty { what });
    }
    match points.iter().position(|p| !p.1.is_finite()) {
        Some(index) => Err(Error::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// The tick label at log₂ K = `x`: K where `x` is a whole number, nothing between.
fn power_of_two(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round().exp2() as u64)
    } else {
        String::new()
    }
}

struct ErrorVsK {
    title: String,
    /// (K, relative error), by K.
    points: Vec<(usize, f64)>,
    chosen: Option<(usize, f64)>,
}

impl Picture for ErrorVsK {
    fn size(&self) -> (u32, u32) {
        (800, 500)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let log2 = |k: usize| (k as f64).log2();
        let (lo, hi) = (
            log2(self.points[0].0).floor(),
            log2(self.points[self.points.len() - 1].0).ceil(),
        );
        let top = self.points.iter().fold(0f64, |m, p| m.max(p.1));
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(70)
            .build_cartesian_2d((lo - 0.5)..(hi + 0.5), 0f64..top)?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .max_light_lines(4)
            .x_desc("K (centroids, log2 scale)")
            .y_desc("relative reconstruction error")
            .x_labels((hi - lo) as usize + 2)
            .x_label_formatter(&|x| power_of_two(*x))
            .y_label_formatter(&|y| format!("{y:.3}"))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        let xy = |&(k, e): &(usize, f64)| (log2(k), e);
        chart.draw_series(LineSeries::new(
            self.points.iter().map(xy),
            LINE.stroke_width(2),
        ))?;
        chart.draw_series(
            self.points
                .iter()
                .map(|p| Circle::new(xy(p), 4, LINE.filled())),
        )?;
        if let Some(point) = &self.chosen {
            let at = xy(point);
            chart.draw_series([TriangleMarker::new(at, 9, CHOSEN.filled())])?;
            let label = TextStyle::from((FAMILY, 14).into_font())
                .color(&CHOSEN)
                .pos(Pos::new(HPos::Left, VPos::Bottom));
            let text = format!("chosen K = {} (error {:.4})", point.0, point.1);
            let (x, y) = chart.backend_coord(&at);
            root.draw(&Text::new(text, (x + 10, y - 10), label))?;
        }
        Ok(())
    }
}

struct AccuracyCurve {
    title: String,
    /// (epoch, accuracy %), by epoch.
    points: Vec<(usize, f64)>,
}

impl Picture for AccuracyCurve {
    fn size(&self) -> (u32, u32) {
        (800, 500)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let last = self.points[self.points.len() - 1].0.max(1) as f64;
        let (low, high) = self
            .points
            .iter()
            .fold((100f64, 0f64), |(l, h), p| (l.min(p.1), h.max(p.1)));
        let pad = ((high - low) * 0.1).max(1.0);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FAMILY, 20))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(
                -0.25..last + 0.25,
                (low - pad).max(0.0)..(high + pad).min(100.0),
            )?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .max_light_lines(4)
            .x_desc("epoch (0 = before fine-tuning)")
            .y_desc("accuracy (%)")
            .x_labels((last as usize + 1).min(12))
            .x_label_formatter(&|x| {
                if x.fract() == 0.0 {
                    format!("{x:.0}")
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        let xy = |&(epoch, a): &(usize, f64)| (epoch as f64, a);
        chart.draw_series(LineSeries::new(
            self.points.iter().map(xy),
            LINE.stroke_width(2),
        ))?;
        chart.draw_series(
            self.points
                .iter()
                .map(|p| Circle::new(xy(p), 4, LINE.filled())),
        )?;
        Ok(())
    }
}

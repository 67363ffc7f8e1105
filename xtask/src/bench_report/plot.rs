//! PNG charts through plotters' bitmap backend: grouped bars and lines.
//!
//! Text needs a TrueType font: plotters (built without fontconfig) gets the bytes of the
//! first of a few system fonts found (Debian's `fonts-dejavu-core` is one), or of the file
//! named by `BENCH_REPORT_FONT`. Without a font there are no charts, and the report says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, anyhow, bail};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::register_font;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Fonts tried in order (after `BENCH_REPORT_FONT`).
const FONTS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Series colours (colour-blind friendly: Okabe-Ito).
const COLORS: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

const SIZE: (u32, u32) = (900, 480);

/// Registers a font with plotters once; `Err` says why charts cannot be drawn.
pub(crate) fn font() -> Result<(), String> {
    static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("BENCH_REPORT_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        candidates.extend(FONTS.iter().map(PathBuf::from));
        for path in candidates {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            // plotters keeps fonts for the process's lifetime.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(path);
            }
        }
        Err(format!(
            "no TrueType font found (tried {}; set BENCH_REPORT_FONT or install fonts-dejavu-core)",
            FONTS.join(", ")
        ))
    })
    .as_ref()
    .map(|_| ())
    .map_err(Clone::clone)
}

/// A horizontal reference line (e.g. a goal at 0.9x).
#[derive(Debug, Clone)]
pub(crate) struct Reference {
    pub(crate) y: f64,
    pub(crate) label: String,
}

/// A grouped bar chart: one group per category, one bar per series; `None` values are
/// left out.
#[derive(Debug, Clone)]
pub(crate) struct Bars {
    pub(crate) title: String,
    pub(crate) y_label: String,
    pub(crate) categories: Vec<String>,
    pub(crate) series: Vec<(String, Vec<Option<f64>>)>,
    pub(crate) references: Vec<Reference>,
}

/// A line chart with numeric x.
#[derive(Debug, Clone)]
pub(crate) struct Lines {
    pub(crate) title: String,
    pub(crate) x_label: String,
    pub(crate) y_label: String,
    pub(crate) series: Vec<(String, Vec<(f64, f64)>)>,
    pub(crate) references: Vec<Reference>,
}

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// Draws each reference as a horizontal line across `0..x_max`, labelled at `label_x`.
fn draw_references<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    references: &[Reference],
    x_max: f64,
    label_x: f64,
) -> anyhow::Result<()> {
    for r in references {
        chart
            .draw_series(LineSeries::new(
                [(0.0, r.y), (x_max, r.y)],
                BLACK.stroke_width(1),
            ))
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                r.label.clone(),
                (label_x, r.y),
                TextStyle::from(("sans-serif", 13).into_font())
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Bottom)),
            )))
            .map_err(plot_err)?;
    }
    Ok(())
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// The top of the y axis: room above the highest value for the legend box in the upper
/// right corner (one line per series).
fn y_max<'a>(
    values: impl Iterator<Item = &'a f64>,
    references: &[Reference],
    series: usize,
) -> f64 {
    let top = values
        .copied()
        .chain(references.iter().map(|r| r.y))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    #[allow(clippy::cast_precision_loss, reason = "a handful of series")]
    let headroom = 1.1 + 0.09 * series as f64;
    if top > 0.0 { top * headroom } else { 1.0 }
}

/// An axis label with as many decimals as the axis range `top` needs.
fn axis_number(v: f64, top: f64) -> String {
    if top >= 20.0 {
        format!("{v:.0}")
    } else if top >= 2.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Bars {
    /// Draws the chart into `path` (PNG).
    pub(crate) fn draw(&self, path: &Path) -> anyhow::Result<()> {
        font().map_err(|e| anyhow!(e))?;
        if self.categories.is_empty() || self.series.is_empty() {
            bail!("no data for {}", self.title);
        }
        let top = y_max(
            self.series.iter().flat_map(|(_, v)| v.iter().flatten()),
            &self.references,
            self.series.len(),
        );
        #[allow(clippy::cast_precision_loss, reason = "a handful of categories")]
        let n_cat = self.categories.len() as f64;
        let root = BitMapBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n_cat, 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc(self.y_label.as_str())
            .y_label_formatter(&|y| axis_number(*y, top))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        #[allow(clippy::cast_precision_loss, reason = "a handful of series")]
        let width = 0.8 / self.series.len() as f64;
        for (s, (name, values)) in self.series.iter().enumerate() {
            let c = color(s);
            let bars = values.iter().enumerate().filter_map(|(i, v)| {
                let v = (*v)?;
                #[allow(clippy::cast_precision_loss, reason = "small indices")]
                let x0 = i as f64 + 0.1 + width * s as f64;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + width * 0.92, v)],
                    c.filled(),
                ))
            });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        }
        draw_references(&mut chart, &self.references, n_cat, n_cat * 0.005)?;
        // Category names under the groups, centred.
        for (i, name) in self.categories.iter().enumerate() {
            #[allow(clippy::cast_precision_loss, reason = "small indices")]
            let (x, _) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let (_, y) = chart.backend_coord(&(0.0, 0.0));
            let style = TextStyle::from(("sans-serif", 15).into_font())
                .pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(name.clone(), (x, y + 8), style))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        root.present()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

impl Lines {
    /// Draws the chart into `path` (PNG).
    pub(crate) fn draw(&self, path: &Path) -> anyhow::Result<()> {
        font().map_err(|e| anyhow!(e))?;
        let points = || self.series.iter().flat_map(|(_, p)| p.iter());
        if points().next().is_none() {
            bail!("no data for {}", self.title);
        }
        let x_max = points().map(|p| p.0).fold(0.0_f64, f64::max).max(1.0) * 1.05;
        let top = y_max(points().map(|p| &p.1), &self.references, self.series.len());
        let root = BitMapBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .x_label_formatter(&|x| axis_number(*x, x_max))
            .y_label_formatter(&|y| axis_number(*y, top))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        for (s, (name, pts)) in self.series.iter().enumerate() {
            let c = color(s);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(plot_err)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(plot_err)?;
        }
        draw_references(&mut chart, &self.references, x_max, x_max * 0.01)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        root.present()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
    }

    #[test]
    fn bar_and_line_charts_are_written_as_png() {
        let dir = tempfile::tempdir().unwrap();
        let bars = Bars {
            title: "ratio to Redis".into(),
            y_label: "x Redis".into(),
            categories: vec!["SET P1".into(), "GET P1".into()],
            series: vec![
                ("standalone".into(), vec![Some(0.96), Some(1.02)]),
                ("cluster".into(), vec![Some(0.3), None]),
            ],
            references: vec![Reference {
                y: 1.0,
                label: "goal".into(),
            }],
        };
        let lines = Lines {
            title: "stalled".into(),
            x_label: "apps".into(),
            y_label: "ratio".into(),
            series: vec![("nodosum".into(), vec![(5.0, 1.1), (50.0, 0.95)])],
            references: vec![],
        };
        let (b, l) = (dir.path().join("bars.png"), dir.path().join("lines.png"));
        match font() {
            Ok(()) => {
                bars.draw(&b).unwrap();
                lines.draw(&l).unwrap();
                assert!(is_png(&b) && is_png(&l));
            }
            // Without a font no chart can be drawn, and drawing says why.
            Err(why) => {
                let err = bars.draw(&b).unwrap_err();
                assert!(err.to_string().contains("font"), "{err} / {why}");
                assert!(!b.exists());
            }
        }
    }

    #[test]
    fn empty_charts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bars = Bars {
            title: "empty".into(),
            y_label: String::new(),
            categories: vec![],
            series: vec![],
            references: vec![],
        };
        assert!(bars.draw(&dir.path().join("x.png")).is_err());
        let lines = Lines {
            title: "empty".into(),
            x_label: String::new(),
            y_label: String::new(),
            series: vec![("a".into(), vec![])],
            references: vec![],
        };
        assert!(lines.draw(&dir.path().join("y.png")).is_err());
    }
}

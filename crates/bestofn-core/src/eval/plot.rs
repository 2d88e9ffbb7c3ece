//! Plots: best-of-N curves per domain, a correlation heatmap, and a scatter with a fitted line.
//! PNG or SVG by the file's extension; text uses the DejaVu Sans shipped in `assets/fonts`, so
//! no system font library is involved.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::bon::BonReport;
use super::correlate::Cell;
use super::tune::TuneReport;

static FONT: Once = Once::new();

fn register() {
    FONT.call_once(|| {
        // Registration fails only for a malformed font, and this one ships with the crate.
        let _ = register_font("sans-serif", FontStyle::Normal, include_bytes!("../../assets/fonts/DejaVuSans.ttf"));
    });
}

fn err(e: impl std::fmt::Debug) -> String {
    format!("cannot draw: {e:?}")
}

/// Draws with the backend the extension names (`.svg` or `.png`).
macro_rules! on_backend {
    ($path:expr, $size:expr, |$root:ident| $body:expr) => {{
        register();
        let path: &Path = $path;
        match path.extension().and_then(|e| e.to_str()) {
            Some("svg") => {
                let $root = SVGBackend::new(path, $size).into_drawing_area();
                $body?;
                $root.present().map_err(err)
            }
            Some("png") => {
                let $root = BitMapBackend::new(path, $size).into_drawing_area();
                $body?;
                $root.present().map_err(err)
            }
            _ => Err(format!("{}: the plot file must end in .svg or .png", path.display())),
        }
    }};
}

/// Whether a plot can be written to `path`: its extension names the format, `.svg` or `.png`.
/// The command line checks it before any work, so a bad name does not cost a whole evaluation.
pub fn check_target(path: &Path) -> Result<(), String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg" | "png") => Ok(()),
        _ => Err(format!("{}: the plot file must end in .svg or .png", path.display())),
    }
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

/// The series legend, lower right, on a translucent white box.
type Linear = plotters::coord::types::RangedCoordf64;

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<Linear, Linear>>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)
}

fn bon_panels<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &BonReport) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let domains: Vec<_> = report.domains.iter().collect();
    let cols = domains.len().clamp(1, 3);
    let rows = domains.len().div_ceil(cols).max(1);
    let areas = root.split_evenly((rows, cols));
    // k on a log2 axis: plot log2(k) linearly and label the ticks 2^x, so they read 1, 2, 4, ...
    let max_k = report.k.last().copied().unwrap_or(1).max(2) as f64;
    let max_x = max_k.log2();
    for ((name, d), area) in domains.into_iter().zip(areas) {
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{name} ({} prompts)", d.prompts.first().copied().unwrap_or(0)), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..max_x, 0f64..1.02f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("k")
            .y_desc("expected correctness")
            .x_labels(max_x.ceil() as usize + 1)
            .x_label_formatter(&|v| {
                if (v - v.round()).abs() < 1e-9 { format!("{}", 2f64.powf(v.round())) } else { String::new() }
            })
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        let points = |values: &[Option<f64>]| -> Vec<(f64, f64)> {
            report.k.iter().zip(values).filter_map(|(k, v)| v.map(|v| ((*k as f64).log2(), v))).collect()
        };
        let oracle = points(&d.oracle);
        chart
            .draw_series(LineSeries::new(oracle, BLACK.stroke_width(2)))
            .map_err(err)?
            .label("oracle@k")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
        if let Some(mean) = d.mean {
            chart
                .draw_series(LineSeries::new(vec![(0.0, mean), (max_x, mean)], RGBColor(128, 128, 128).stroke_width(1)))
                .map_err(err)?
                .label("mean@1")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(128, 128, 128)));
        }
        for (i, (reward, curve)) in d.rewards.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let line = points(&curve.bon);
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(err)?
                .label(format!("BoN@k {reward}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        }
        legend(&mut chart)?;
    }
    Ok(())
}

/// BoN@k curves per domain, with oracle@k and mean@1, on a log2 k axis.
pub fn plot_bon(report: &BonReport, path: &Path) -> Result<(), String> {
    let panels = report.domains.len().max(1);
    let cols = panels.clamp(1, 3) as u32;
    let rows = panels.div_ceil(3).max(1) as u32;
    on_backend!(path, (420 * cols, 340 * rows), |root| bon_panels(&root, report))
}

/// The index of the cell whose centre a tick at `v` marks (ticks at i + 0.5), if any.
fn centre(v: f64) -> Option<usize> {
    let i = v - 0.5;
    ((i - i.round()).abs() < 1e-6 && i >= -1e-6).then(|| i.round() as usize)
}

fn heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    grid: &[(String, Vec<Cell>)],
    xs: &[String],
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (nx, ny) = (xs.len() as f64, grid.len() as f64);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(110)
        .build_cartesian_2d(0f64..nx, 0f64..ny)
        .map_err(err)?;
    let x_names = xs.to_vec();
    let y_names: Vec<String> = grid.iter().map(|(y, _)| y.clone()).collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * xs.len() + 1)
        .y_labels(2 * grid.len() + 1)
        // Ticks fall on half-integers too; only the cell centres get a name.
        .x_label_formatter(&|v| centre(*v).and_then(|i| x_names.get(i).cloned()).unwrap_or_default())
        .y_label_formatter(&|v| centre(ny - *v).and_then(|i| y_names.get(i).cloned()).unwrap_or_default())
        .draw()
        .map_err(err)?;
    for (row, (_, cells)) in grid.iter().enumerate() {
        let yy = ny - 1.0 - row as f64;
        for (col, c) in cells.iter().enumerate() {
            let r = c.r.unwrap_or(0.0).clamp(-1.0, 1.0);
            // Blue for positive, red for negative, white at zero.
            let fade = |v: f64| (255.0 * (1.0 - v.abs())) as u8;
            let color = if r >= 0.0 { RGBColor(fade(r), fade(r), 255) } else { RGBColor(255, fade(r), fade(r)) };
            let x = col as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new([(x, yy), (x + 1.0, yy + 1.0)], color.filled())))
                .map_err(err)?;
            let label = c.r.map_or("-".into(), |r| format!("{r:.2}"));
            let text_color = if r.abs() > 0.6 { WHITE } else { BLACK };
            let style = ("sans-serif", 14).into_font().color(&text_color);
            chart.plotting_area().draw(&Text::new(label, (x + 0.38, yy + 0.58), style)).map_err(err)?;
        }
    }
    Ok(())
}

/// A heatmap of one method's grid (y rows by x columns, like the paper's Figure 3).
pub fn plot_heatmap(title: &str, grid: &[(String, Vec<Cell>)], xs: &[String], path: &Path) -> Result<(), String> {
    let size = (140 + 90 * xs.len() as u32, 110 + 50 * grid.len() as u32);
    on_backend!(path, size, |root| heatmap(&root, title, grid, xs))
}

fn scatter<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    points: &[(f64, f64)],
    names: (&str, &str),
    title: &str,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let (xmin, xmax) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = |lo: f64, hi: f64| {
        let d = ((hi - lo) * 0.08).max(1e-9);
        (lo - d)..(hi + d)
    };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(pad(xmin, xmax), pad(ymin, ymax))
        .map_err(err)?;
    chart.configure_mesh().x_desc(names.0).y_desc(names.1).draw().map_err(err)?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, PALETTE[0].filled()))).map_err(err)?;
    // Least-squares line.
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx > 0.0 {
        let slope = sxy / sxx;
        let line = vec![(xmin, my + slope * (xmin - mx)), (xmax, my + slope * (xmax - mx))];
        chart.draw_series(LineSeries::new(line, PALETTE[1].stroke_width(2))).map_err(err)?;
    }
    Ok(())
}

/// A scatter of one (x, y) pair with its least-squares line, like the paper's Figure 4.
pub fn plot_scatter(points: &[(f64, f64)], names: (&str, &str), title: &str, path: &Path) -> Result<(), String> {
    if points.len() < 2 {
        return Err("a scatter needs at least two points with both values".into());
    }
    on_backend!(path, (640, 480), |root| scatter(&root, points, names, title))
}

fn tune_panels<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, report: &TuneReport) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    let domains: Vec<_> = report.domains.iter().filter(|(_, d)| !d.choices.is_empty()).collect();
    let cols = domains.len().clamp(1, 3);
    let rows = domains.len().div_ceil(cols).max(1);
    let areas = root.split_evenly((rows, cols));
    for ((name, d), area) in domains.into_iter().zip(areas) {
        let max_x = d.choices.iter().map(|c| c.mean_candidates).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(&area)
            .caption(format!("{name} ({} prompts)", d.prompts), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..max_x * 1.05, 0f64..1.02f64)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("mean candidates sampled")
            .y_desc("expected accuracy")
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        let mut scorers: Vec<&str> = d.choices.iter().map(|c| c.scorer.as_str()).collect();
        scorers.sort_unstable();
        scorers.dedup();
        for (i, scorer) in scorers.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let mut fixed: Vec<(f64, f64)> = d
                .choices
                .iter()
                .filter(|c| c.scorer == *scorer && c.adaptive.is_none())
                .map(|c| (c.mean_candidates, c.accuracy))
                .collect();
            fixed.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart.draw_series(fixed.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(err)?;
            chart
                .draw_series(LineSeries::new(fixed, color.stroke_width(2)))
                .map_err(err)?
                .label(format!("fixed N, {scorer}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            let adaptive: Vec<(f64, f64)> = d
                .choices
                .iter()
                .filter(|c| c.scorer == *scorer && c.adaptive.is_some())
                .map(|c| (c.mean_candidates, c.accuracy))
                .collect();
            if !adaptive.is_empty() {
                chart
                    .draw_series(adaptive.iter().map(|&p| TriangleMarker::new(p, 5, color.filled())))
                    .map_err(err)?
                    .label(format!("adaptive, {scorer}"))
                    .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 5, color.filled()));
            }
        }
        if let (Some(x), Some(y)) = (d.mean_candidates, d.expected_accuracy) {
            chart
                .draw_series(std::iter::once(Circle::new((x, y), 8, BLACK.stroke_width(2))))
                .map_err(err)?
                .label("chosen")
                .legend(|(x, y)| Circle::new((x + 9, y), 5, BLACK.stroke_width(2)));
        }
        legend(&mut chart)?;
    }
    Ok(())
}

/// Accuracy against mean candidates per domain: one line of fixed-N points per scorer, adaptive
/// settings as triangles, the chosen policy circled.
pub fn plot_tune(report: &TuneReport, path: &Path) -> Result<(), String> {
    let panels = report.domains.values().filter(|d| !d.choices.is_empty()).count().max(1);
    let cols = panels.clamp(1, 3) as u32;
    let rows = panels.div_ceil(3).max(1) as u32;
    on_backend!(path, (460 * cols, 360 * rows), |root| tune_panels(&root, report))
}

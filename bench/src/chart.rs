//! The bench's PNG: embeddings/s by number of workers (with the limit of each text set), and the
//! distribution of end-to-end latency under each load measured, with its goal.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;

/// Overrides where the labels' TrueType font is looked for.
pub const FONT_ENV: &str = "EMBEDSTREAM_BENCH_FONT";
/// The font the chart prefers (Debian's fonts-dejavu-core, which deploy/setup.sh installs).
const PREFERRED_FONT: &str = "DejaVuSans.ttf";

/// The labels' font: `$EMBEDSTREAM_BENCH_FONT`, else DejaVuSans.ttf, else any TrueType font,
/// under the system's and the user's font directories.
fn find_font() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(FONT_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let mut dirs: Vec<PathBuf> = ["/usr/share/fonts", "/usr/local/share/fonts"].iter().map(PathBuf::from).collect();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/share/fonts"));
    }
    let mut fonts = Vec::new();
    let mut stack = dirs;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) {
                fonts.push(path);
            }
        }
    }
    fonts.sort();
    let preferred = fonts.iter().find(|p| p.file_name().is_some_and(|n| n == PREFERRED_FONT));
    preferred.or(fonts.first()).cloned().with_context(|| {
        format!("no TrueType font under /usr/share/fonts: install fonts-dejavu-core, or set {FONT_ENV}")
    })
}

pub struct Series {
    pub name: String,
    /// The limit (a plain ONNX Runtime session on every core), embeddings/s.
    pub limit: f64,
    /// (workers, embeddings/s)
    pub by_workers: Vec<(usize, f64)>,
}

/// One latency measurement: its load, each record's latency (ms, sorted), its p99 goal.
pub struct Latency {
    pub label: String,
    pub ms: Vec<f64>,
    pub goal_ms: f64,
}

const COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

pub fn draw(path: &Path, series: &[Series], latencies: &[Latency]) -> Result<()> {
    let font_path = find_font()?;
    let font = std::fs::read(&font_path).with_context(|| font_path.display().to_string())?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("{} is not a font", font_path.display()))?;
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);

    let max_workers = series.iter().flat_map(|s| s.by_workers.iter().map(|w| w.0)).max().unwrap_or(1);
    let top = series.iter().flat_map(|s| s.by_workers.iter().map(|w| w.1).chain([s.limit])).fold(1.0, f64::max) * 1.6;
    let mut chart = ChartBuilder::on(&left)
        .caption("embeddings/s by model workers", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..max_workers as f64 + 0.5, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("workers (one per core)")
        .y_desc("embeddings/s")
        .x_labels(max_workers + 1)
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { String::new() })
        .draw()?;
    for (s, colour) in series.iter().zip(COLOURS.iter().cycle()) {
        let points: Vec<(f64, f64)> = s.by_workers.iter().map(|&(w, r)| (w as f64, r)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(format!("embedstream, {}", s.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        let dashes = (0..20).map(|i| {
            let x0 = 0.5 + max_workers as f64 * i as f64 / 20.0;
            PathElement::new(vec![(x0, s.limit), (x0 + max_workers as f64 / 40.0, s.limit)], colour.stroke_width(1))
        });
        chart
            .draw_series(dashes)?
            .label(format!("limit (plain ORT session), {}", s.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], colour.stroke_width(1)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).draw()?;

    let latencies: Vec<&Latency> = latencies.iter().filter(|l| !l.ms.is_empty()).collect();
    if !latencies.is_empty() {
        // The empirical distributions: the share of records delivered within x ms.
        let right_edge =
            (latencies.iter()).map(|l| l.ms.last().copied().unwrap_or(l.goal_ms).max(l.goal_ms)).fold(1.0, f64::max)
                * 1.1;
        let mut chart = ChartBuilder::on(&right)
            .caption("end-to-end latency", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..right_edge, 0f64..100f64)?;
        chart.configure_mesh().x_desc("Kafka timestamp in to out, ms").y_desc("% of records within").draw()?;
        for (l, colour) in latencies.iter().zip(COLOURS.iter().cycle()) {
            let n = l.ms.len() as f64;
            let cdf: Vec<(f64, f64)> = l.ms.iter().enumerate().map(|(i, &x)| (x, (i + 1) as f64 * 100.0 / n)).collect();
            chart
                .draw_series(LineSeries::new(cdf, colour.stroke_width(2)))?
                .label(format!("{} ({} records)", l.label, l.ms.len()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
            chart
                .draw_series(LineSeries::new([(l.goal_ms, 0.0), (l.goal_ms, 100.0)], colour.stroke_width(1)))?
                .label(format!("goal: p99 under {:.0} ms", l.goal_ms))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], colour.stroke_width(1)));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::LowerRight).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

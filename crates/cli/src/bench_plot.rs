//! `ingot bench --plot FILE.svg`: the bench's results as an SVG bar chart, one panel per
//! test (pp512, tg128, ...) with its own tokens/s axis (prefill and decode rates differ by
//! orders of magnitude), ingot's bar beside llama.cpp's where it was measured, the mean
//! printed on each bar, ± one stdev as a whisker, and the ingot / llama.cpp ratio in the
//! panel's caption. SVG text is written as `<text>`, so no font files are needed.

use anyhow::{anyhow, Context, Result};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One bar group: a test and the rates (tokens/s) of each repetition.
pub struct PlotRow<'a> {
    pub test: &'a str,
    pub ingot_tps: &'a [f64],
    pub llama_cpp_tps: &'a [f64],
}

/// What the title says: the model file, the backend, threads and the machine.
pub struct PlotInfo<'a> {
    pub model: &'a str,
    pub backend: &'a str,
    pub threads: usize,
    pub repetitions: usize,
}

const INGOT_COLOR: RGBColor = RGBColor(31, 119, 180);
const LLAMA_COLOR: RGBColor = RGBColor(255, 127, 14);
const PANEL_W: u32 = 320;
const PANEL_H: u32 = 340;
const TITLE_H: u32 = 70;
const MAX_COLS: usize = 4;
/// Room for the title's model file and machine name above one or two panels.
const MIN_W: u32 = 760;

/// The plot file, created before the benchmark runs so that a bad path fails at once; it is
/// removed again if the benchmark fails before the plot is written.
pub struct PlotFile {
    path: PathBuf,
    file: Option<File>,
}

impl PlotFile {
    pub fn create(path: &Path) -> Result<PlotFile> {
        let file = File::create(path).with_context(|| format!("cannot write the plot to {}", path.display()))?;
        Ok(PlotFile { path: path.to_path_buf(), file: Some(file) })
    }

    pub fn write(mut self, svg: &str) -> Result<()> {
        let mut f = self.file.take().expect("written once");
        f.write_all(svg.as_bytes()).and_then(|_| f.flush()).with_context(|| format!("writing the plot to {}", self.path.display()))
    }
}

impl Drop for PlotFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The CPU's model name (Linux), else the architecture.
pub fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn mean_sd(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    Some((m, var.sqrt()))
}

/// An x axis of `n` bar slots: slot i is centred on x = i, its tick (and label) there.
struct Slots(usize);

impl Ranged for Slots {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let width = (limit.1 - limit.0) as f64;
        limit.0 + ((v + 0.5) / self.0 as f64 * width).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.0 as f64 - 0.5
    }
}

/// The chart as an SVG document.
pub fn render(info: &PlotInfo, machine: &str, rows: &[PlotRow]) -> Result<String> {
    let cols = rows.len().clamp(1, MAX_COLS);
    let nrows = rows.len().div_ceil(cols).max(1);
    let size = ((PANEL_W * cols as u32).max(MIN_W), TITLE_H + PANEL_H * nrows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, info, machine, rows, (nrows, cols)).map_err(|e| anyhow!("drawing the plot: {e}"))?;
        root.present().map_err(|e| anyhow!("drawing the plot: {e}"))?;
    }
    Ok(svg)
}

fn draw(
    root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    info: &PlotInfo,
    machine: &str,
    rows: &[PlotRow],
    grid: (usize, usize),
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(TITLE_H);
    let center = (root.dim_in_pixel().0 as i32 / 2, 0);
    let middle = Pos::new(HPos::Center, VPos::Top);
    title.draw_text(
        &format!("ingot bench: {}", info.model),
        &("sans-serif", 26).into_font().style(FontStyle::Bold).color(&BLACK).pos(middle),
        (center.0, 10),
    )?;
    let runs = if info.repetitions == 1 { "1 run".to_string() } else { format!("mean of {} runs, whiskers ± 1 stdev", info.repetitions) };
    title.draw_text(
        &format!("backend {}, {} threads, {machine}; {runs}", info.backend, info.threads),
        &("sans-serif", 18).into_font().color(&RGBColor(80, 80, 80)).pos(middle),
        (center.0, 42),
    )?;
    for (panel, row) in body.split_evenly(grid).iter().zip(rows) {
        draw_panel(panel, info.backend, row)?;
    }
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    backend: &str,
    row: &PlotRow,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let mut bars = Vec::new();
    if let Some(ms) = mean_sd(row.ingot_tps) {
        bars.push((format!("ingot ({backend})"), ms, INGOT_COLOR));
    }
    if let Some(ms) = mean_sd(row.llama_cpp_tps) {
        bars.push(("llama.cpp".to_string(), ms, LLAMA_COLOR));
    }
    let caption = match (bars.first(), bars.get(1)) {
        (Some((_, (i, _), _)), Some((_, (l, _), _))) => format!("{}: ingot {:.2}× llama.cpp", row.test, i / l),
        _ => row.test.to_string(),
    };
    let top = bars.iter().map(|(_, (m, s), _)| m + s).fold(0.0f64, f64::max);
    // Headroom above the tallest bar for its label.
    let y_max = if top.is_finite() && top > 0.0 { top * 1.18 } else { 1.0 };
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption(caption, ("sans-serif", 20).into_font().style(FontStyle::Bold))
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d(Slots(bars.len().max(1)), 0.0..y_max)?;
    // Bar i is centred on x = i, where its engine's name is the axis label.
    let x_label = |v: &f64| names.get(v.round().max(0.0) as usize).cloned().unwrap_or_default();
    let y_label = |v: &f64| if y_max >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc("engine")
        .y_desc("tokens/s")
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 17))
        .max_light_lines(0)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    let label_style = ("sans-serif", 17).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, (_, (m, s), color)) in bars.iter().enumerate() {
        let x = i as f64;
        chart.plotting_area().draw(&Rectangle::new([(x - 0.32, 0.0), (x + 0.32, *m)], color.filled()))?;
        if *s > 0.0 {
            let whisker = [(x, (m - s).max(0.0)), (x, m + s)];
            chart.plotting_area().draw(&PathElement::new(whisker, BLACK.stroke_width(2)))?;
        }
        chart.plotting_area().draw(&Text::new(format!("{m:.2}"), (x, m + s + y_max * 0.01), label_style.clone()))?;
    }
    Ok(())
}

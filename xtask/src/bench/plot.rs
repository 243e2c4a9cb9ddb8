//! The report's plots: PNG files beside docs/benchmarks/README.md, drawn with plotters from the
//! tables' medians, one line (or bar) per server.
use std::path::Path;

use anyhow::Context;
use plotters::{
    coord::Shift,
    prelude::*,
    style::{register_font, FontStyle},
};

use super::report::{Samples, Table};

/// Debian's fonts-dejavu-core, installed by `cargo xtask setup`.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (900, 540);

/// Makes the font known to plotters, once per process.
fn load_font() -> anyhow::Result<()> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT).map_err(|err| format!("{FONT}: {err}"))?;
            register_font("sans-serif", FontStyle::Normal, bytes.leak())
                .map_err(|_| format!("{FONT} is not a usable font"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Where a row's x value comes from.
pub enum Across<'a> {
    /// The row's median in this column (the flood's achieved rate).
    Column(&'a str),
    /// The last number in the row's case ("1000 machines", "ipxe.efi × 50").
    CaseNumber,
}

fn median(columns: &std::collections::BTreeMap<String, Samples>, column: &str) -> Option<f64> {
    columns.get(column).and_then(Samples::median)
}

/// The servers of `table`, in the order first measured.
fn servers(table: &Table) -> Vec<&str> {
    let mut servers: Vec<&str> = Vec::new();
    for ((_, server), _) in &table.rows {
        if !servers.contains(&server.as_str()) {
            servers.push(server);
        }
    }
    servers
}

/// `column` against `across`, a line per server, for the rows whose case passes `keep`.
pub fn lines(
    table: &Table,
    across: Across,
    x_label: &str,
    column: &str,
    keep: impl Fn(&str) -> bool,
    path: &Path,
) -> anyhow::Result<()> {
    load_font()?;
    let series: Vec<(&str, Vec<(f64, f64)>)> = servers(table)
        .into_iter()
        .map(|server| {
            let mut points: Vec<(f64, f64)> = table
                .rows
                .iter()
                .filter(|((case, s), _)| s == server && keep(case))
                .filter_map(|((case, _), columns)| {
                    let x = match across {
                        Across::Column(name) => median(columns, name)?,
                        Across::CaseNumber => case
                            .split_whitespace()
                            .filter_map(|word| word.parse().ok())
                            .next_back()?,
                    };
                    Some((x, median(columns, column)?))
                })
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (server, points)
        })
        .collect();
    let all = series.iter().flat_map(|(_, points)| points);
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = all.map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = canvas(path)?;
    let mut chart = titled(&root, table, column, 48).build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(column)
        .label_style(("sans-serif", 15))
        .draw()?;
    for (index, (server, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(server)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|point| Circle::new(point, 4, color.filled())),
        )?;
    }
    legend(&mut chart, SeriesLabelPosition::MiddleRight)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The series' names and colors, at `position`.
fn legend<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

/// A white picture of the plots' size, drawn into `path` when presented.
fn canvas(path: &Path) -> anyhow::Result<DrawingArea<BitMapBackend<'_>, Shift>> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// A chart titled with the table and the column, its x labels `x_labels` pixels high.
fn titled<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    table: &Table,
    column: &str,
    x_labels: u32,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut chart = ChartBuilder::on(root);
    chart
        .caption(format!("{}: {column}", table.title), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(x_labels)
        .y_label_area_size(72);
    chart
}

/// `column` for each server as bars, in the table's first case.
pub fn bars(table: &Table, column: &str, path: &Path) -> anyhow::Result<()> {
    load_font()?;
    let values: Vec<(&str, f64)> = table
        .rows
        .iter()
        .filter_map(|((_, server), columns)| Some((server.as_str(), median(columns, column)?)))
        .collect();
    let y_max = values.iter().map(|v| v.1).fold(1.0, f64::max) * 1.15;
    let names: Vec<String> = values.iter().map(|v| v.0.to_string()).collect();
    let root = canvas(path)?;
    let mut chart = titled(&root, table, column, 40)
        .build_cartesian_2d((0..values.len()).into_segmented(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(column)
        .x_labels(values.len())
        .x_label_formatter(&|segment| match segment {
            SegmentValue::CenterOf(index) => names.get(*index).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 15))
        .draw()?;
    chart.draw_series(values.iter().enumerate().map(|(index, (_, value))| {
        let color = Palette99::pick(index).filled();
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(index), 0.0),
                (SegmentValue::Exact(index + 1), *value),
            ],
            color,
        );
        bar.set_margin(0, 0, 30, 30);
        bar
    }))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `column` as horizontal bars, a row per case and server, named by the case and colored by the
/// server: for tables of many cases with long names (the rack's stages).
pub fn bars_by_case(table: &Table, column: &str, path: &Path) -> anyhow::Result<()> {
    load_font()?;
    let servers = servers(table);
    let rows: Vec<(&str, usize, f64)> = table
        .rows
        .iter()
        .filter_map(|((case, server), columns)| {
            let color = servers.iter().position(|s| s == server)?;
            Some((case.as_str(), color, median(columns, column)?))
        })
        .collect();
    let x_max = rows.iter().map(|row| row.2).fold(0.001, f64::max) * 1.1;
    let root = canvas(path)?;
    let mut chart = ChartBuilder::on(&root);
    chart
        .caption(format!("{}: {column}", table.title), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(230);
    let mut chart = chart.build_cartesian_2d(0.0..x_max, (0..rows.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc(column)
        .y_labels(rows.len())
        .y_label_formatter(&|segment| match segment {
            // Drawn top down, in the table's order.
            SegmentValue::CenterOf(index) => rows
                .get(rows.len().wrapping_sub(index + 1))
                .map_or_else(String::new, |row| row.0.to_string()),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .draw()?;
    for (color, server) in servers.iter().enumerate() {
        let fill = Palette99::pick(color).filled();
        chart
            .draw_series(
                rows.iter()
                    .enumerate()
                    .filter(|(_, row)| row.1 == color)
                    .map(|(index, row)| {
                        let at = rows.len() - 1 - index;
                        let mut bar = Rectangle::new(
                            [
                                (0.0, SegmentValue::Exact(at)),
                                (row.2, SegmentValue::Exact(at + 1)),
                            ],
                            fill,
                        );
                        bar.set_margin(3, 3, 0, 0);
                        bar
                    }),
            )?
            .label(*server)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], fill));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

//! `neurostimd plot DIR --out FILE.svg|png`: one figure of a run.
//!
//! Panels, top to bottom: the whole run at a glance (firing rate against
//! its target with the spike raster, bursts in red; or the membrane against
//! the reference/ceiling for the voltage and silence objectives), a zoomed
//! window of the membrane with the planner's forecasts overlaid, the
//! stimulation in the same window, and the latency histograms.
//!
//! Data come through [`RunLoader`]: today a report directory
//! ([`ReportDir`]: `summary.json`, `objective.json`, the `.hgrm` files, and
//! the `--trace-out` CSV with its `.forecasts.csv`); a recording (Open
//! Ephys) becomes a second loader producing the same [`RunData`].
//!
//! Text needs a TrueType font (plotters lays labels out with ab_glyph): a
//! common system font is used, or `$NEUROSTIMD_FONT`.

use crate::neuron::spikes::{SpikeDetector, DEFAULT_THRESHOLD_MV};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// A figure that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Missing(String),
    #[error("--out {0}: the file name must end in .svg or .png")]
    Format(String),
    #[error("no TrueType font found for the figure's text (looked in {0}); install one (e.g. Debian's fonts-dejavu-core) or set NEUROSTIMD_FONT=/path/to/font.ttf")]
    NoFont(String),
    #[error("drawing: {0}")]
    Draw(String),
}

/// One plan's forecast.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    pub t0_ms: f64,
    pub dt_ms: f64,
    pub v_mv: Vec<f64>,
}

/// What the run aimed for (from `objective.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub kind: String,
    /// (from ms, Hz).
    pub rate_schedule: Vec<(f64, f64)>,
    pub reference: Option<crate::policy::Waveform>,
    pub ceiling_mv: f64,
    pub min_rate_hz: f64,
    pub max_isi_ms: f64,
}

/// A latency distribution: (value µs, count in the bucket ending there).
#[derive(Clone, Debug, PartialEq)]
pub struct Latency {
    pub tag: String,
    pub buckets: Vec<(f64, u64)>,
}

/// Everything a figure shows, whatever the source.
#[derive(Clone, Debug, Default)]
pub struct RunData {
    pub title: String,
    pub subtitle: String,
    pub t_ms: Vec<f64>,
    pub v_mv: Vec<f64>,
    pub command: Vec<f64>,
    pub requested: Vec<f64>,
    pub forecasts: Vec<Forecast>,
    pub target: Option<Target>,
    pub latency: Vec<Latency>,
}

/// A source of run data.
pub trait RunLoader {
    fn load(&self) -> Result<RunData, PlotError>;
}

/// A report directory, with the trace (default `DIR/trace.csv`) if present.
pub struct ReportDir {
    pub dir: PathBuf,
    pub trace: Option<PathBuf>,
}

fn read(path: &Path) -> Result<String, PlotError> {
    std::fs::read_to_string(path).map_err(|error| PlotError::Io {
        path: path.display().to_string(),
        error,
    })
}

/// Parse an HdrHistogram percentile distribution (`.hgrm`) into buckets.
pub fn parse_hgrm(text: &str) -> Vec<(f64, u64)> {
    let mut out = Vec::new();
    let mut prev = 0u64;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(v), Some(_q), Some(total)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(v), Ok(total)) = (v.parse::<f64>(), total.parse::<u64>()) else {
            continue;
        };
        if total > prev {
            out.push((v, total - prev));
            prev = total;
        }
    }
    out
}

fn parse_trace(path: &Path, d: &mut RunData) -> Result<(), PlotError> {
    let text = read(path)?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, h)| h).unwrap_or("");
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        cols.iter().position(|c| *c == name).ok_or_else(|| PlotError::Parse {
            path: path.display().to_string(),
            line: 1,
            message: format!("no column `{name}` (a `neurostimd --trace-out` file has t_ms,V_mV,...,I_command_uA_cm2)"),
        })
    };
    let (ct, cv, cc, cr) = (
        col("t_ms")?,
        col("V_mV")?,
        col("I_command_uA_cm2")?,
        col("I_requested_uA_cm2")?,
    );
    for (k, line) in lines {
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        // Every value sets an axis: an infinite, NaN or absurd one would
        // stretch it for ever (V_mV = inf and 1e300 hung the plot), so it is
        // refused by row; no trace of ours comes near 1e9 in ms, mV or µA/cm².
        let num = |i: usize| -> Result<f64, PlotError> {
            f.get(i)
                .and_then(|x| x.parse::<f64>().ok())
                .filter(|x| x.is_finite() && x.abs() <= 1e9)
                .ok_or_else(|| PlotError::Parse {
                    path: path.display().to_string(),
                    line: k + 1,
                    message: format!("column {} is not a number within ±1e9", i + 1),
                })
        };
        let t = num(ct)?;
        // Time sets the axes and the zoom: it must be finite and never go
        // back (an infinite or NaN time would stretch an axis forever).
        if !t.is_finite() || d.t_ms.last().is_some_and(|&p| t < p) {
            return Err(PlotError::Parse {
                path: path.display().to_string(),
                line: k + 1,
                message: format!("t_ms {t} is not a finite time after the previous row's"),
            });
        }
        d.t_ms.push(t);
        d.v_mv.push(num(cv)?);
        d.command.push(num(cc)?);
        d.requested.push(num(cr)?);
    }
    Ok(())
}

fn parse_forecasts(path: &Path) -> Result<Vec<Forecast>, PlotError> {
    let text = read(path)?;
    let mut out = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let vals: Result<Vec<f64>, _> = line.split(',').map(str::parse::<f64>).collect();
        match vals {
            Ok(v) if v.len() >= 3 && v[0].is_finite() && v[1].is_finite() && v[1] > 0.0 => out
                .push(Forecast {
                    t0_ms: v[0],
                    dt_ms: v[1],
                    v_mv: v[2..].to_vec(),
                }),
            _ => {
                return Err(PlotError::Parse {
                    path: path.display().to_string(),
                    line: k + 1,
                    message: "expected t_ms,dt_ms,v1,... (finite t_ms, dt_ms > 0)".into(),
                })
            }
        }
    }
    Ok(out)
}

fn parse_target(v: &serde_json::Value) -> Option<Target> {
    let reference = serde_json::from_value::<serde_json::Value>(v["reference"].clone())
        .ok()
        .and_then(|r| {
            Some(crate::policy::Waveform {
                shape: serde_json::from_value(r["shape"].clone()).ok()?,
                offset: r["offset"].as_f64()?,
                amplitude: r["amplitude"].as_f64()?,
                period_ms: r["period_ms"].as_f64()?,
            })
        });
    Some(Target {
        kind: v["kind"].as_str()?.to_string(),
        rate_schedule: v["rate_schedule"]
            .as_array()?
            .iter()
            .filter_map(|s| Some((s["at_ms"].as_f64()?, s["hz"].as_f64()?)))
            .collect(),
        reference,
        ceiling_mv: v["ceiling_mv"].as_f64()?,
        min_rate_hz: v["min_rate_hz"].as_f64()?,
        max_isi_ms: v["max_isi_ms"].as_f64()?,
    })
}

impl RunLoader for ReportDir {
    fn load(&self) -> Result<RunData, PlotError> {
        let mut d = RunData::default();
        let summary_path = self.dir.join("summary.json");
        let summary: serde_json::Value =
            serde_json::from_str(&read(&summary_path)?).map_err(|e| PlotError::Parse {
                path: summary_path.display().to_string(),
                line: e.line(),
                message: e.to_string(),
            })?;
        let s = &summary;
        let q = &s["quality"];
        d.title = format!(
            "{} plant, policy {}, objective {} ({} clock, {:.1} s)",
            s["plant"].as_str().unwrap_or("?"),
            s["policy"].as_str().unwrap_or("?"),
            s["objective"].as_str().unwrap_or("?"),
            s["clock"].as_str().unwrap_or("?"),
            s["plant_time_s"].as_f64().unwrap_or(0.0)
        );
        d.subtitle = format!(
            "error {:.3} {} | {} spikes ({:.1} Hz, {} bursts) | charge {:.0} nC/cm2 | plan misses {} | interventions {} | lost samples {}",
            q["objective_error"].as_f64().unwrap_or(f64::NAN),
            q["objective_error_unit"].as_str().unwrap_or(""),
            q["spikes"].as_u64().unwrap_or(0),
            q["rate_hz"].as_f64().unwrap_or(0.0),
            q["bursts"].as_u64().unwrap_or(0),
            s["charge_delivered_nc_cm2"].as_f64().unwrap_or(0.0),
            s["plan_misses"].as_u64().unwrap_or(0),
            s["interventions_total"].as_u64().unwrap_or(0),
            s["lost_samples"].as_u64().unwrap_or(0),
        );
        let obj = self.dir.join("objective.json");
        if obj.exists() {
            let v: serde_json::Value =
                serde_json::from_str(&read(&obj)?).map_err(|e| PlotError::Parse {
                    path: obj.display().to_string(),
                    line: e.line(),
                    message: e.to_string(),
                })?;
            d.target = parse_target(&v);
        }
        for tag in [
            "sample_to_command",
            "plan_latency",
            "decision_age",
            "wakeup_jitter",
        ] {
            let p = self.dir.join(format!("{tag}.hgrm"));
            if p.exists() {
                d.latency.push(Latency {
                    tag: tag.to_string(),
                    buckets: parse_hgrm(&read(&p)?),
                });
            }
        }
        let trace = self
            .trace
            .clone()
            .unwrap_or_else(|| self.dir.join("trace.csv"));
        if trace.exists() {
            parse_trace(&trace, &mut d)?;
            let f = crate::control::forecasts_path(&trace);
            if f.exists() {
                d.forecasts = parse_forecasts(&f)?;
            }
        } else if self.trace.is_some() {
            return Err(PlotError::Missing(format!(
                "{}: no such trace",
                trace.display()
            )));
        }
        Ok(d)
    }
}

// ------------------------------------------------------------------ drawing

/// Register a system TrueType font as "sans-serif" (once).
fn ensure_font() -> Result<(), PlotError> {
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = FONT.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("NEUROSTIMD_FONT") {
            candidates.push(p.into());
        }
        for p in [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
            "/usr/share/fonts/noto/NotoSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
        ] {
            candidates.push(p.into());
        }
        for p in &candidates {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "))
    });
    r.clone().map_err(PlotError::NoFont)
}

fn draw_err<E: std::fmt::Debug>(e: E) -> PlotError {
    PlotError::Draw(format!("{e:?}"))
}

/// Options of a figure.
#[derive(Clone, Debug)]
pub struct PlotOptions {
    /// Start of the zoomed window, s (default: centred in the run).
    pub zoom_start_s: Option<f64>,
    /// Length of the zoomed window, ms.
    pub zoom_ms: f64,
}

impl Default for PlotOptions {
    fn default() -> Self {
        PlotOptions {
            zoom_start_s: None,
            zoom_ms: 250.0,
        }
    }
}

const W: u32 = 1400;
const H: u32 = 1200;
const V_COLOR: RGBColor = RGBColor(31, 78, 140);
const FORECAST: RGBColor = RGBColor(230, 120, 20);
const STIM: RGBColor = RGBColor(20, 130, 70);
const TARGET: RGBColor = RGBColor(120, 120, 120);
const BURST: RGBColor = RGBColor(200, 30, 30);

/// Draw `d` into `out` (`.svg` or `.png`).
pub fn plot(d: &RunData, out: &Path, opts: &PlotOptions) -> Result<(), PlotError> {
    ensure_font()?;
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(out, (W, H)).into_drawing_area();
            draw(d, &root, opts)?;
            root.present().map_err(draw_err)
        }
        Some("png") => {
            let root = BitMapBackend::new(out, (W, H)).into_drawing_area();
            draw(d, &root, opts)?;
            root.present().map_err(draw_err)
        }
        _ => Err(PlotError::Format(out.display().to_string())),
    }
}

/// Spike times (ms) and whether each is inside a burst.
fn spikes(d: &RunData, max_isi: f64) -> Vec<(f64, bool)> {
    let mut det = SpikeDetector::new(DEFAULT_THRESHOLD_MV);
    let times: Vec<f64> = d
        .t_ms
        .iter()
        .zip(&d.v_mv)
        .filter_map(|(&t, &v)| det.push(t, v))
        .collect();
    (0..times.len())
        .map(|k| {
            let near_prev = k > 0 && times[k] - times[k - 1] < max_isi;
            let near_next = k + 1 < times.len() && times[k + 1] - times[k] < max_isi;
            (times[k], near_prev || near_next)
        })
        .collect()
}

/// Min/max of `v` over `bins` equal time bins of [t0, t1): an envelope
/// that keeps spikes visible at any zoom with a bounded number of points.
fn envelope(t: &[f64], v: &[f64], t0: f64, t1: f64, bins: usize) -> Vec<(f64, f64)> {
    let mut lo = vec![f64::INFINITY; bins];
    let mut hi = vec![f64::NEG_INFINITY; bins];
    for (&ti, &vi) in t.iter().zip(v) {
        if ti < t0 || ti >= t1 {
            continue;
        }
        let b = (((ti - t0) / (t1 - t0)) * bins as f64) as usize;
        let b = b.min(bins - 1);
        lo[b] = lo[b].min(vi);
        hi[b] = hi[b].max(vi);
    }
    let mut out = Vec::with_capacity(2 * bins);
    for b in 0..bins {
        if lo[b].is_finite() {
            let tb = t0 + (b as f64 + 0.5) * (t1 - t0) / bins as f64;
            out.push((tb / 1000.0, lo[b]));
            out.push((tb / 1000.0, hi[b]));
        }
    }
    out
}

fn draw<DB: DrawingBackend>(
    d: &RunData,
    root: &DrawingArea<DB, Shift>,
    opts: &PlotOptions,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(draw_err)?;
    let (head, body) = root.split_vertically(70);
    head.draw(&Text::new(
        d.title.clone(),
        (20, 10),
        ("sans-serif", 24).into_font().style(FontStyle::Normal),
    ))
    .map_err(draw_err)?;
    head.draw(&Text::new(
        d.subtitle.clone(),
        (20, 42),
        ("sans-serif", 16).into_font().color(&RGBColor(60, 60, 60)),
    ))
    .map_err(draw_err)?;
    let panels = body.split_by_breakpoints([] as [u32; 0], [300u32, 640, 860]);
    let [overview, zoom, stim, lat] = [&panels[0], &panels[1], &panels[2], &panels[3]];

    let kind = d.target.as_ref().map_or("rate", |t| t.kind.as_str());
    let max_isi = d.target.as_ref().map_or(10.0, |t| t.max_isi_ms);
    let sp = spikes(d, max_isi);
    if d.t_ms.len() < 2 {
        draw_no_trace([overview, zoom, stim])?;
    } else {
        let t_end = *d.t_ms.last().expect("checked");
        let t_start = d.t_ms[0];
        if matches!(kind, "rate" | "burst") {
            draw_overview_rate(d, overview, &sp, kind, t_start, t_end)?;
        } else {
            draw_overview_v(d, overview, t_start, t_end)?;
        }
        let (z0, z1, idx) = zoom_window(d, opts, t_start, t_end);
        draw_zoom_membrane(d, zoom, &sp, z0, z1, &idx)?;
        draw_zoom_stim(d, stim, z0, z1, &idx)?;
    }
    draw_latency(d, lat)
}

/// Without a trace the three trace panels say how to get one, rather than
/// leaving the figure blank.
fn draw_no_trace<DB: DrawingBackend>(areas: [&DrawingArea<DB, Shift>; 3]) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    for (area, what) in areas
        .into_iter()
        .zip(["overview", "membrane", "stimulation"])
    {
        area.draw(&Text::new(
            format!("{what}: no trace (run the daemon with --trace-out DIR/trace.csv)"),
            (40, 40),
            ("sans-serif", 18),
        ))
        .map_err(draw_err)?;
    }
    Ok(())
}

/// Overview panel for the rate and burst objectives.
fn draw_overview_rate<DB: DrawingBackend>(
    d: &RunData,
    overview: &DrawingArea<DB, Shift>,
    sp: &[(f64, bool)],
    kind: &str,
    t_start: f64,
    t_end: f64,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let x = (t_start / 1000.0)..(t_end / 1000.0);
    // Instantaneous rate, 1/ISI, held from each spike to the next
    // (a window count quantises to 1/window and lags by half of it).
    let mut rate = Vec::new();
    for w in sp.windows(2) {
        let hz = 1000.0 / (w[1].0 - w[0].0);
        rate.push((w[0].0 / 1000.0, hz));
        rate.push((w[1].0 / 1000.0, hz));
    }
    let mut targets: Vec<(f64, f64)> = Vec::new();
    if let Some(tg) = &d.target {
        if kind == "rate" {
            for (k, &(at, hz)) in tg.rate_schedule.iter().enumerate() {
                let to = tg.rate_schedule.get(k + 1).map_or(t_end, |s| s.0);
                targets.push((at.max(t_start) / 1000.0, hz));
                targets.push((to.min(t_end) / 1000.0, hz));
            }
        } else {
            targets = vec![
                (t_start / 1000.0, tg.min_rate_hz),
                (t_end / 1000.0, tg.min_rate_hz),
            ];
        }
    }
    // In-burst ISIs (a few ms) would flatten everything else: the
    // axis stops at three times the target (or 40 Hz) and clips.
    let target_max = targets.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let cap = (3.0 * target_max).max(40.0);
    let ymax = rate
        .iter()
        .map(|p| p.1)
        .chain(targets.iter().map(|p| p.1))
        .fold(5.0f64, f64::max)
        .min(cap)
        * 1.25;
    let rate: Vec<(f64, f64)> = rate.into_iter().map(|(t, r)| (t, r.min(ymax))).collect();
    let mut c = ChartBuilder::on(overview)
        .caption(
            "Whole run: firing rate (1/ISI) and its target; spikes above (bursts in red)",
            ("sans-serif", 17),
        )
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(x, 0.0..ymax)
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc("rate (Hz)")
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    c.draw_series(LineSeries::new(rate, V_COLOR.stroke_width(2)))
        .map_err(draw_err)?
        .label("firing rate (1/ISI)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], V_COLOR.stroke_width(2)));
    if !targets.is_empty() {
        c.draw_series(LineSeries::new(targets, TARGET.stroke_width(2)))
            .map_err(draw_err)?
            .label(if kind == "rate" {
                "target rate"
            } else {
                "least rate to keep"
            })
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET.stroke_width(2)));
    }
    let tick = ymax * 0.06;
    c.draw_series(sp.iter().map(|&(s, burst)| {
        let col = if burst { BURST } else { RGBColor(40, 40, 40) };
        PathElement::new(
            vec![(s / 1000.0, ymax - tick), (s / 1000.0, ymax - 0.1 * tick)],
            col.stroke_width(1),
        )
    }))
    .map_err(draw_err)?;
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// Overview panel for the voltage and silence objectives.
fn draw_overview_v<DB: DrawingBackend>(
    d: &RunData,
    overview: &DrawingArea<DB, Shift>,
    t_start: f64,
    t_end: f64,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let x = (t_start / 1000.0)..(t_end / 1000.0);
    let env = envelope(&d.t_ms, &d.v_mv, t_start, t_end + 1e-9, 1200);
    let (lo, hi) = env
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    let mut c = ChartBuilder::on(overview)
        .caption("Whole run: membrane and its target", ("sans-serif", 17))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d(x, (lo - 2.0)..(hi + 2.0))
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc("V (mV)")
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    c.draw_series(env.chunks(2).map(|p| {
        PathElement::new(
            vec![p[0], *p.get(1).unwrap_or(&p[0])],
            V_COLOR.stroke_width(1),
        )
    }))
    .map_err(draw_err)?
    .label("membrane (min/max per bin)")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], V_COLOR));
    draw_v_target(&mut c, d, t_start, t_end)?;
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// The zoomed window `[z0, z1]` (ms) and the trace indices inside it,
/// shared by the membrane and stimulation panels so they line up.
fn zoom_window(
    d: &RunData,
    opts: &PlotOptions,
    t_start: f64,
    t_end: f64,
) -> (f64, f64, Vec<usize>) {
    let span = opts.zoom_ms.min(t_end - t_start).max(1.0);
    let z0 = opts
        .zoom_start_s
        .map_or((t_start + t_end - span) / 2.0, |s| s * 1000.0)
        .clamp(t_start, (t_end - span).max(t_start));
    let z1 = z0 + span;
    let idx: Vec<usize> = (0..d.t_ms.len())
        .filter(|&k| d.t_ms[k] >= z0 && d.t_ms[k] <= z1)
        .collect();
    (z0, z1, idx)
}

/// Zoomed membrane with the planner's forecasts and the spikes.
fn draw_zoom_membrane<DB: DrawingBackend>(
    d: &RunData,
    zoom: &DrawingArea<DB, Shift>,
    sp: &[(f64, bool)],
    z0: f64,
    z1: f64,
    idx: &[usize],
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let vmin = idx.iter().map(|&k| d.v_mv[k]).fold(f64::INFINITY, f64::min);
    let vmax = idx
        .iter()
        .map(|&k| d.v_mv[k])
        .fold(f64::NEG_INFINITY, f64::max);
    let fc: Vec<&Forecast> = d
        .forecasts
        .iter()
        .filter(|f| f.t0_ms >= z0 && f.t0_ms + f.dt_ms * f.v_mv.len() as f64 <= z1)
        .collect();
    let mut c = ChartBuilder::on(zoom)
        .caption(
            format!(
                "Membrane {:.2}-{:.2} s with the planner's forecasts ({} plans, each {:.0} ms ahead)",
                z0 / 1000.0,
                z1 / 1000.0,
                fc.len(),
                fc.first().map_or(0.0, |f| f.dt_ms * f.v_mv.len() as f64)
            ),
            ("sans-serif", 17),
        )
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d((z0 / 1000.0)..(z1 / 1000.0), (vmin.min(-80.0) - 2.0)..(vmax.max(-40.0) + 4.0))
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc("V (mV)")
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    c.draw_series(fc.iter().map(|f| {
        let mut pts = Vec::with_capacity(f.v_mv.len());
        for (j, &v) in f.v_mv.iter().enumerate() {
            pts.push(((f.t0_ms + (j + 1) as f64 * f.dt_ms) / 1000.0, v));
        }
        PathElement::new(pts, FORECAST.mix(0.45).stroke_width(1))
    }))
    .map_err(draw_err)?
    .label("forecasts (one per plan)")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], FORECAST.stroke_width(2)));
    c.draw_series(LineSeries::new(
        idx.iter().map(|&k| (d.t_ms[k] / 1000.0, d.v_mv[k])),
        V_COLOR.stroke_width(2),
    ))
    .map_err(draw_err)?
    .label("membrane")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], V_COLOR.stroke_width(2)));
    draw_v_target(&mut c, d, z0, z1)?;
    let top = vmax.max(-40.0) + 3.0;
    c.draw_series(
        sp.iter()
            .filter(|(s, _)| *s >= z0 && *s <= z1)
            .map(|&(s, burst)| {
                TriangleMarker::new(
                    (s / 1000.0, top),
                    6,
                    if burst {
                        BURST.filled()
                    } else {
                        BLACK.filled()
                    },
                )
            }),
    )
    .map_err(draw_err)?;
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// Requested against limited stimulation over the zoomed window.
fn draw_zoom_stim<DB: DrawingBackend>(
    d: &RunData,
    stim: &DrawingArea<DB, Shift>,
    z0: f64,
    z1: f64,
    idx: &[usize],
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let imax = idx
        .iter()
        .map(|&k| d.command[k].abs().max(d.requested[k].abs()))
        .fold(0.5f64, f64::max)
        * 1.15;
    let mut c = ChartBuilder::on(stim)
        .caption(
            "Stimulation in the same window (after the safety limiter)",
            ("sans-serif", 17),
        )
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(60)
        .build_cartesian_2d((z0 / 1000.0)..(z1 / 1000.0), -imax..imax)
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_desc("time (s)")
        .y_desc("I (uA/cm2)")
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    c.draw_series(LineSeries::new(
        idx.iter().map(|&k| (d.t_ms[k] / 1000.0, d.requested[k])),
        TARGET.stroke_width(1),
    ))
    .map_err(draw_err)?
    .label("requested")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET));
    c.draw_series(LineSeries::new(
        idx.iter().map(|&k| (d.t_ms[k] / 1000.0, d.command[k])),
        STIM.stroke_width(2),
    ))
    .map_err(draw_err)?
    .label("command")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], STIM.stroke_width(2)));
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// The voltage objective's reference or the silence ceiling over [t0, t1].
fn draw_v_target<DB: DrawingBackend>(
    c: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    d: &RunData,
    t0: f64,
    t1: f64,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let Some(tg) = &d.target else { return Ok(()) };
    let line: Vec<(f64, f64)> = match tg.kind.as_str() {
        "voltage" => match &tg.reference {
            Some(w) => (0..=400)
                .map(|k| {
                    let t = t0 + (t1 - t0) * k as f64 / 400.0;
                    (t / 1000.0, w.at(t))
                })
                .collect(),
            None => return Ok(()),
        },
        "silence" => vec![(t0 / 1000.0, tg.ceiling_mv), (t1 / 1000.0, tg.ceiling_mv)],
        _ => return Ok(()),
    };
    c.draw_series(LineSeries::new(line, TARGET.stroke_width(2)))
        .map_err(draw_err)?
        .label(if tg.kind == "voltage" {
            "reference"
        } else {
            "ceiling"
        })
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], TARGET.stroke_width(2)));
    Ok(())
}

fn draw_latency<DB: DrawingBackend>(
    d: &RunData,
    area: &DrawingArea<DB, Shift>,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let shown: Vec<&Latency> = d
        .latency
        .iter()
        .filter(|l| {
            matches!(
                l.tag.as_str(),
                "sample_to_command" | "plan_latency" | "decision_age"
            )
        })
        .filter(|l| !l.buckets.is_empty())
        .collect();
    if shown.is_empty() {
        area.draw(&Text::new(
            "latency: no .hgrm files in the report",
            (40, 40),
            ("sans-serif", 18),
        ))
        .map_err(draw_err)?;
        return Ok(());
    }
    // Log-spaced bins, 10 per decade, as a fraction of each distribution.
    let lo = shown
        .iter()
        .flat_map(|l| l.buckets.iter().map(|b| b.0))
        .fold(f64::INFINITY, f64::min)
        .max(0.01);
    let hi = shown
        .iter()
        .flat_map(|l| l.buckets.iter().map(|b| b.0))
        .fold(0.0f64, f64::max)
        .max(lo * 10.0);
    let (l0, l1) = (lo.log10().floor(), hi.log10().ceil());
    let per = 10.0;
    let nb = ((l1 - l0) * per) as usize;
    let colors = [V_COLOR, FORECAST, STIM];
    let mut series = Vec::new();
    let mut ymax = 0.0f64;
    for l in &shown {
        let total: u64 = l.buckets.iter().map(|b| b.1).sum();
        let mut bins = vec![0.0; nb.max(1)];
        for &(v, n) in &l.buckets {
            let k = (((v.max(lo)).log10() - l0) * per) as usize;
            bins[k.min(nb - 1)] += n as f64 / total.max(1) as f64;
        }
        ymax = bins.iter().cloned().fold(ymax, f64::max);
        series.push((l, bins));
    }
    let mut c = ChartBuilder::on(area)
        .caption(
            "Latency histograms (whole run; fraction per bin, 10 bins per decade)",
            ("sans-serif", 17),
        )
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (10f64.powf(l0)..10f64.powf(l1)).log_scale(),
            0.0..(ymax * 1.15),
        )
        .map_err(draw_err)?;
    c.configure_mesh()
        .x_desc("latency (us, log scale)")
        .y_desc("fraction")
        .light_line_style(WHITE)
        .draw()
        .map_err(draw_err)?;
    for (k, (l, bins)) in series.iter().enumerate() {
        let col = colors[k % colors.len()];
        let p = |b: usize| {
            let e = 10f64.powf(l0 + (b as f64 + 0.5) / per);
            (e, bins[b])
        };
        let n = l.buckets.iter().map(|b| b.1).sum::<u64>();
        let p99 = {
            let mut acc = 0u64;
            l.buckets
                .iter()
                .find(|b| {
                    acc += b.1;
                    acc as f64 >= 0.99 * n as f64
                })
                .map_or(f64::NAN, |b| b.0)
        };
        let name = l.tag.replace('_', " ");
        c.draw_series(LineSeries::new((0..bins.len()).map(p), col.stroke_width(2)))
            .map_err(draw_err)?
            .label(format!("{name} (p99 {p99:.1} us, n = {n})"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
    }
    c.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_rows_become_bucket_counts() {
        let text = "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
                    1.000 0.000000000000          5           1.00\n\
                    2.000 0.500000000000         10           2.00\n\
                    2.000 0.750000000000         10           4.00\n\
                    9.000 1.000000000000         12\n\
                    #[Mean    =        2.000, StdDeviation   =        1.000]\n";
        assert_eq!(parse_hgrm(text), vec![(1.0, 5), (2.0, 5), (9.0, 2)]);
    }

    #[test]
    fn envelope_keeps_extremes_per_bin() {
        let t: Vec<f64> = (0..100).map(|k| k as f64).collect();
        let mut v = vec![-70.0; 100];
        v[37] = 30.0;
        let e = envelope(&t, &v, 0.0, 100.0, 10);
        assert_eq!(e.len(), 20);
        assert_eq!(e[7], (0.035, 30.0));
        assert!(e.iter().filter(|p| p.1 == 30.0).count() == 1);
    }
}

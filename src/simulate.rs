//! Running the simulator plant open loop: `neurostimd simulate`.
//!
//! Drives a [`SimPlant`] with a piecewise-constant stimulation waveform,
//! streams the trace and spike times to files, and summarises the firing
//! and the cell that produced it (family, preset, cell seed and every
//! parameter, so a randomised cell can be named and rerun).
//! The timing it reports covers the plant's `read` calls only, so file output
//! does not pollute the simulator's real-time factor.

use crate::config::SimConfig;
use crate::neuron::spikes::{FiringSummary, DEFAULT_BURST_ISI_MS};
use crate::plant::{Plant, PlantError, SimPlant};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A stimulation waveform: (t_ms, current) breakpoints, held until the next
/// one; zero before the first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Waveform {
    points: Vec<(f64, f64)>,
}

/// Errors of `simulate` that are the user's to fix (bad input files) or the
/// system's (I/O).
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{path}:{line}: {message}")]
    BadStim {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error(transparent)]
    Plant(#[from] PlantError),
}

impl Waveform {
    pub fn new(points: Vec<(f64, f64)>) -> Waveform {
        Waveform { points }
    }

    /// Parse a CSV of `t_ms,current` rows (µA/cm²). A first line that is not
    /// numeric is taken as a header; `#` starts a comment. Times must
    /// increase strictly.
    pub fn parse_csv(path: &str, text: &str) -> Result<Waveform, SimulateError> {
        let bad = |line: usize, message: String| SimulateError::BadStim {
            path: path.to_string(),
            line,
            message,
        };
        let mut points: Vec<(f64, f64)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let nums: Vec<Option<f64>> = fields.iter().map(|f| f.parse().ok()).collect();
            if points.is_empty() && nums.iter().all(Option::is_none) {
                continue; // header
            }
            if fields.len() != 2 {
                return Err(bad(
                    i + 1,
                    format!("expected 2 columns (t_ms,current), found {}", fields.len()),
                ));
            }
            let (Some(t), Some(c)) = (nums[0], nums[1]) else {
                let which = if nums[0].is_none() { 0 } else { 1 };
                return Err(bad(
                    i + 1,
                    format!(
                        "column {} (`{}`) is not a number",
                        ["t_ms", "current"][which],
                        fields[which]
                    ),
                ));
            };
            if !t.is_finite() || !c.is_finite() {
                return Err(bad(i + 1, "values must be finite".into()));
            }
            if let Some(&(last, _)) = points.last() {
                if t <= last {
                    return Err(bad(
                        i + 1,
                        format!("t_ms {t} does not increase (previous {last})"),
                    ));
                }
            }
            points.push((t, c));
        }
        Ok(Waveform { points })
    }

    pub fn load(path: &Path) -> Result<Waveform, SimulateError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SimulateError::Io {
            path: name.clone(),
            error: source,
        })?;
        Self::parse_csv(&name, &text)
    }

    /// Current at time `t_ms`.
    pub fn at(&self, t_ms: f64) -> f64 {
        match self.points.partition_point(|&(t, _)| t <= t_ms) {
            0 => 0.0,
            i => self.points[i - 1].1,
        }
    }
}

/// What to run and where to write.
#[derive(Clone, Debug)]
pub struct SimulateRequest {
    pub sim: SimConfig,
    pub duration_ms: f64,
    pub stim: Waveform,
    pub trace_out: Option<PathBuf>,
    pub spikes_out: Option<PathBuf>,
}

/// The result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct SimulateReport {
    pub preset: String,
    /// The cell as run: family, cell seed, drawn parameters, delay.
    pub cell: crate::plant::sim::CellInfo,
    pub integrator: &'static str,
    pub duration_ms: f64,
    pub samples: u64,
    /// Wall time spent in the plant (integration only), s.
    pub wall_seconds: f64,
    /// Simulated time / wall time.
    pub realtime_factor: f64,
    #[serde(flatten)]
    pub firing: FiringSummary,
    pub spike_times_ms: Vec<f64>,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SimulateError + '_ {
    move |source| SimulateError::Io {
        path: path.display().to_string(),
        error: source,
    }
}

/// Run the plant open loop for `duration_ms`.
pub fn run(req: &SimulateRequest) -> Result<SimulateReport, SimulateError> {
    let mut plant = SimPlant::new(&req.sim);
    let period = req.sim.sample_period_ms;
    let n = (req.duration_ms / period).round() as u64 + 1;
    let noisy = req.sim.noise_sd_mv > 0.0;

    let mut trace = match &req.trace_out {
        Some(p) => {
            let f = std::fs::File::create(p).map_err(io_err(p))?;
            let mut w = std::io::BufWriter::new(f);
            let mut header = String::from("t_ms");
            for name in plant.state_names() {
                header.push(',');
                header.push_str(name);
            }
            header.push_str(",I_stim_uA_cm2");
            if noisy {
                header.push_str(",V_measured_mV");
            }
            writeln!(w, "{header}").map_err(io_err(p))?;
            Some((w, p))
        }
        None => None,
    };

    let mut spikes = Vec::new();
    let mut wall = std::time::Duration::ZERO;
    for _ in 0..n {
        let start = Instant::now();
        let s = plant.read()?;
        wall += start.elapsed();
        if let Some(ts) = plant.last_spike() {
            spikes.push(ts);
        }
        if let Some((w, p)) = &mut trace {
            let y = &plant.state()[..plant.state_names().len()];
            let mut line = format!("{}", round_t(s.t_ms));
            for x in y {
                line.push(',');
                line.push_str(&format!("{x:.10e}"));
            }
            line.push_str(&format!(",{}", s.i_applied));
            if noisy {
                line.push_str(&format!(",{:.6}", s.v_mv));
            }
            writeln!(w, "{line}").map_err(io_err(p))?;
        }
        plant.write(req.stim.at(s.t_ms))?;
    }
    if let Some((mut w, p)) = trace {
        w.flush().map_err(io_err(p))?;
    }
    if let Some(p) = &req.spikes_out {
        let mut text = String::with_capacity(spikes.len() * 16);
        for t in &spikes {
            text.push_str(&format!("{t:.6}\n"));
        }
        std::fs::write(p, text).map_err(io_err(p))?;
    }
    let duration_ms = (n - 1) as f64 * period;
    let secs = wall.as_secs_f64();
    Ok(SimulateReport {
        preset: req.sim.preset.clone(),
        cell: req.sim.cell_info(),
        integrator: req.sim.method.name(),
        duration_ms,
        samples: n,
        wall_seconds: secs,
        realtime_factor: if secs > 0.0 {
            duration_ms / 1000.0 / secs
        } else {
            f64::INFINITY
        },
        firing: FiringSummary::new(&spikes, duration_ms, DEFAULT_BURST_ISI_MS),
        spike_times_ms: spikes,
    })
}

/// Sample times are k·T in floating point; print them without the 1e-15
/// noise of the multiplication.
fn round_t(t: f64) -> f64 {
    (t * 1e9).round() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waveform_holds_values_and_reports_bad_lines() {
        let w = Waveform::parse_csv("s.csv", "t_ms,current\n10,1.5\n20,0\n").unwrap();
        assert_eq!(
            (w.at(0.0), w.at(10.0), w.at(15.0), w.at(25.0)),
            (0.0, 1.5, 1.5, 0.0)
        );
        let e = Waveform::parse_csv("s.csv", "t_ms,current\n10,1.5\n20,abc\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.csv:3: column current (`abc`) is not a number"
        );
        let e = Waveform::parse_csv("s.csv", "10,1\n5,1\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("s.csv:2: t_ms 5 does not increase"),
            "{e}"
        );
        let e = Waveform::parse_csv("s.csv", "10,1,3\n").unwrap_err();
        assert!(e.to_string().contains("expected 2 columns"), "{e}");
    }
}

//! Traces with gaps: recordings made of sweeps (a current-clamp protocol
//! records a few seconds, pauses, records again) come in as one CSV whose
//! rows jump in time between sweeps. A window cut across such a jump pairs
//! the end of one sweep with the start of the next as if they were
//! contiguous, so the reader splits the trace into contiguous segments and
//! every consumer cuts windows within a segment only.
//!
//! A segment ends where the optional `sweep` column changes value or where
//! `t_ms` jumps by more than 1.5 sample periods (the median step of the
//! trace): either marks a boundary (`scripts/import_recording.py` writes
//! both).

use super::dataset::Series;
use super::TrainError;
use std::path::Path;

/// One contiguous stretch of raw samples: V (mV) and the current applied
/// over the interval that led into each sample (µA/cm²).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawSegment {
    pub v: Vec<f64>,
    pub i: Vec<f64>,
}

/// A trace as contiguous raw segments at one sample period.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTrace {
    pub period_ms: f64,
    pub segments: Vec<RawSegment>,
}

impl RawTrace {
    /// Every segment at the model step `dt_ms` (V at each step's end, I
    /// averaged over it); segments shorter than one step are dropped.
    pub fn series(&self, dt_ms: f64) -> Result<Vec<Series>, TrainError> {
        let dec = crate::forecast::WindowRing::decimation_for(dt_ms, self.period_ms).ok_or_else(
            || {
                TrainError::NotEnoughData(format!(
                "the model step {dt_ms} ms is not a whole number of the data's sample period {} ms",
                self.period_ms
            ))
            },
        )?;
        Ok(self
            .segments
            .iter()
            .map(|s| Series::from_samples(&s.v, &s.i, dec, dt_ms))
            .filter(|s| !s.is_empty())
            .collect())
    }

    pub fn samples(&self) -> usize {
        self.segments.iter().map(|s| s.v.len()).sum()
    }
}

/// Read a trace CSV (header naming `t_ms`, `V_measured_mV` or `V_mV`,
/// `I_stim_uA_cm2`, optionally `sweep`) into contiguous segments.
pub fn read_trace_csv(path: &Path) -> Result<RawTrace, TrainError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| TrainError::Io {
        path: name.clone(),
        error,
    })?;
    let bad =
        |line: usize, what: String| TrainError::NotEnoughData(format!("{name}:{line}: {what}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| bad(1, "empty file".into()))?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| header.iter().position(|h| h == n))
    };
    let ct = col(&["t_ms"]).ok_or_else(|| bad(1, "no `t_ms` column".into()))?;
    let cv = col(&["V_measured_mV", "V_mV"])
        .ok_or_else(|| bad(1, "no `V_mV` or `V_measured_mV` column".into()))?;
    let ci = col(&["I_stim_uA_cm2"]).ok_or_else(|| bad(1, "no `I_stim_uA_cm2` column".into()))?;
    let cs = col(&["sweep"]);
    // (t, V, I, sweep) per row.
    let mut rows: Vec<(f64, f64, f64, f64)> = Vec::new();
    for (k, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let num = |c: usize| -> Result<f64, TrainError> {
            f.get(c)
                .and_then(|x| x.trim().parse::<f64>().ok())
                .filter(|x| x.is_finite())
                .ok_or_else(|| {
                    bad(
                        k + 2,
                        format!("column {} is not a finite number", header[c]),
                    )
                })
        };
        let sweep = match cs {
            Some(c) => num(c)?,
            None => 0.0,
        };
        rows.push((num(ct)?, num(cv)?, num(ci)?, sweep));
    }
    if rows.len() < 3 {
        return Err(bad(1, "fewer than 3 samples".into()));
    }
    let mut steps: Vec<f64> = rows.windows(2).map(|w| w[1].0 - w[0].0).collect();
    steps.sort_by(f64::total_cmp);
    let period = steps[steps.len() / 2];
    if period.is_nan() || period <= 0.0 {
        return Err(bad(
            1,
            format!("t_ms does not increase (median step {period} ms)"),
        ));
    }
    // A membrane trace sampled slower than 1 Hz has nothing to forecast
    // (and 1e300 ms steps overflow what follows).
    if period > 1000.0 {
        return Err(bad(
            1,
            format!("the median time step {period} ms is above 1000 ms: is t_ms in ms?"),
        ));
    }
    Ok(RawTrace {
        period_ms: period,
        segments: split_rows(&rows, period),
    })
}

/// Split rows at sweep changes and time gaps. Row k's current was applied
/// over (t_k, t_k+1]; the model pairs V at t_k with the current that led
/// into it, so within a segment the current is shifted by one sample and
/// the segment's first row (nothing led into it) is dropped.
fn split_rows(rows: &[(f64, f64, f64, f64)], period: f64) -> Vec<RawSegment> {
    let mut out = Vec::new();
    let mut start = 0;
    for k in 1..=rows.len() {
        let boundary = k == rows.len()
            || rows[k].3 != rows[k - 1].3
            || rows[k].0 - rows[k - 1].0 > 1.5 * period
            || rows[k].0 <= rows[k - 1].0;
        if !boundary {
            continue;
        }
        let seg = &rows[start..k];
        if seg.len() >= 2 {
            out.push(RawSegment {
                v: seg[1..].iter().map(|r| r.1).collect(),
                i: seg[..seg.len() - 1].iter().map(|r| r.2).collect(),
            });
        }
        start = k;
    }
    out
}

/// Split contiguous segments in time: the first `train` fraction of the
/// total, the next `val` fraction, the rest. A cut that falls inside a
/// segment splits it; with `snap` the held-out cut moves to the nearest
/// segment boundary (whole sweeps held out), if there is one.
pub fn split_segments(
    segs: &[Series],
    train: f64,
    val: f64,
    snap: bool,
) -> (Vec<Series>, Vec<Series>, Vec<Series>) {
    let total: usize = segs.iter().map(Series::len).sum();
    let mut cut2 = ((train + val) * total as f64) as usize;
    if snap && segs.len() > 1 {
        let mut edges = Vec::new();
        let mut acc = 0;
        for s in &segs[..segs.len() - 1] {
            acc += s.len();
            edges.push(acc);
        }
        if let Some(&e) = edges.iter().min_by_key(|&&e| e.abs_diff(cut2)) {
            cut2 = e;
        }
    }
    let cut1 = ((train / (train + val)) * cut2 as f64) as usize;
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let mut at = 0;
    for s in segs {
        let (lo, hi) = (at, at + s.len());
        let part = |from: usize, to: usize| {
            let (f, t) = (from.clamp(lo, hi) - lo, to.clamp(lo, hi) - lo);
            (t > f).then(|| s.slice(f, t))
        };
        a.extend(part(0, cut1));
        b.extend(part(cut1, cut2));
        c.extend(part(cut2, usize::MAX));
        at = hi;
    }
    (a, b, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_and_gaps_split_and_windows_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        let mut text = String::from("t_ms,V_mV,I_stim_uA_cm2,sweep\n");
        for k in 0..10 {
            text.push_str(&format!("{},{},{},0\n", k as f64 * 0.1, k, 1.0));
        }
        // A gap of 100 ms, same sweep number: still a boundary.
        for k in 0..6 {
            text.push_str(&format!(
                "{},{},{},0\n",
                100.0 + k as f64 * 0.1,
                50 + k,
                2.0
            ));
        }
        // Contiguous in time but a new sweep.
        for k in 6..10 {
            text.push_str(&format!(
                "{},{},{},1\n",
                100.0 + k as f64 * 0.1,
                50 + k,
                3.0
            ));
        }
        std::fs::write(&p, text).unwrap();
        let t = read_trace_csv(&p).unwrap();
        assert!((t.period_ms - 0.1).abs() < 1e-9);
        let lens: Vec<usize> = t.segments.iter().map(|s| s.v.len()).collect();
        assert_eq!(lens, [9, 5, 3]);
        assert_eq!(t.segments[1].v[0], 51.0);
        assert_eq!(t.segments[1].i[0], 2.0);
        let s = t.series(0.2).unwrap();
        assert_eq!(s.iter().map(Series::len).collect::<Vec<_>>(), [4, 2, 1]);
    }

    #[test]
    fn splits_cut_in_time_and_snap_to_sweeps() {
        let seg = |n: usize, base: f32| Series {
            dt_ms: 1.0,
            v: (0..n).map(|k| base + k as f32).collect(),
            i: vec![0.0; n],
        };
        let segs = [seg(40, 0.0), seg(30, 100.0), seg(30, 200.0)];
        let (a, b, c) = split_segments(&segs, 0.6, 0.1, false);
        let len = |x: &[Series]| x.iter().map(Series::len).sum::<usize>();
        assert_eq!((len(&a), len(&b), len(&c)), (60, 10, 30));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].v[0], 200.0);
        let (a, b, c) = split_segments(&segs, 0.55, 0.1, true);
        assert_eq!(len(&c), 30, "held-out snapped to the last sweep");
        assert_eq!(len(&a) + len(&b), 70);
        assert!(b.iter().all(|s| !s.is_empty()));
    }
}

//! Latency reports in HdrHistogram's own formats, so the usual tools
//! (HdrHistogram's plotter, `hdrh` in Python, HistogramLogAnalyzer) read
//! them: percentile distributions (`.hgrm`, the layout of Java's
//! `outputPercentileDistribution`) and interval logs (`.hlog`, compressed
//! V2 encoding), plus a `summary.json` per run.
//!
//! The real-time side only records into preallocated histograms. Interval
//! histograms leave the loop through a bounded channel and come back emptied
//! through another ([`IntervalHandoff`]): the loop never allocates, never
//! blocks and never loses counts (if no empty set is available it keeps
//! recording into the current one, and that interval is simply longer).

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest recordable latency, ns (a minute: anything longer is a stall and
/// is clamped, and counted as such by the caller).
pub const MAX_NS: u64 = 60_000_000_000;

/// A histogram of nanoseconds, 3 significant digits, preallocated: recording
/// a value up to [`MAX_NS`] never allocates.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

/// The percentile distribution in HdrHistogram's text layout, values
/// divided by `unit_ratio` (1000 for ns → µs), 5 ticks per half distance.
pub fn percentile_distribution(h: &Histogram<u64>, unit_ratio: f64) -> String {
    let digits = h.sigfig() as usize;
    // HdrHistogram's sub-bucket count: the power of two ≥ 2·10^digits.
    let sub_buckets = (2 * 10u64.pow(digits as u32)).next_power_of_two();
    let mut s = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if h.is_empty() {
        s.push_str("#[Mean    =          NaN, StdDeviation   =          NaN]\n#[Max     =          NaN, Total count    =            0]\n");
        s.push_str(&format!(
            "#[Buckets = {:>12}, SubBuckets     = {:>12}]\n",
            h.buckets(),
            sub_buckets
        ));
        return s;
    }
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / unit_ratio;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            s.push_str(&format!(
                "{value:>12.digits$} {q:>2.12} {total:>10} {:>14.2}\n",
                1.0 / (1.0 - q)
            ));
        } else {
            s.push_str(&format!("{value:>12.digits$} {q:>2.12} {total:>10}\n"));
        }
    }
    s.push_str(&format!(
        "#[Mean    = {:>12.digits$}, StdDeviation   = {:>12.digits$}]\n",
        h.mean() / unit_ratio,
        h.stdev() / unit_ratio
    ));
    s.push_str(&format!(
        "#[Max     = {:>12.digits$}, Total count    = {:>12}]\n",
        h.max() as f64 / unit_ratio,
        h.len()
    ));
    s.push_str(&format!(
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]\n",
        h.buckets(),
        sub_buckets
    ));
    s
}

/// The histograms of one interval, tagged.
pub struct IntervalSet {
    pub tags: &'static [&'static str],
    pub histograms: Vec<Histogram<u64>>,
    /// Interval start and length since the run began.
    pub start: Duration,
    pub length: Duration,
}

/// The loop's end of the interval handoff.
pub struct IntervalHandoff {
    full: crossbeam_channel::Sender<Box<IntervalSet>>,
    empty: crossbeam_channel::Receiver<Box<IntervalSet>>,
    current: Box<IntervalSet>,
}

impl IntervalHandoff {
    /// The histograms being recorded into now.
    #[inline]
    pub fn current(&mut self) -> &mut IntervalSet {
        &mut self.current
    }

    /// Close the current interval at `now` (since the run began) if an
    /// empty set is available; otherwise keep recording. Never blocks or
    /// allocates.
    #[inline]
    pub fn rotate(&mut self, now: Duration) {
        if let Ok(mut fresh) = self.empty.try_recv() {
            fresh.start = now;
            fresh.length = Duration::ZERO;
            let mut done = std::mem::replace(&mut self.current, fresh);
            done.length = now.saturating_sub(done.start);
            // Capacity equals the pool size, so this cannot be full; if the
            // writer is gone the set is dropped here, off the hot path's
            // concern (only at shutdown).
            let _ = self.full.try_send(done);
        }
    }

    /// Hand over the last interval (end of run).
    pub fn finish(mut self, now: Duration) {
        self.current.length = now.saturating_sub(self.current.start);
        let _ = self.full.send(self.current);
    }
}

/// Called with each interval's histograms on the writer thread before they
/// are reset (the service's live latency figures).
pub type IntervalTap = Box<dyn FnMut(&IntervalSet) + Send>;

/// How long the interval-log writer naps between looks for a closed
/// interval (one a second): it polls, so the loop's hand-off never wakes it.
const WRITER_NAP: Duration = Duration::from_millis(10);

/// Writes an interval log (`.hlog`) on its own thread.
pub struct IntervalLogThread {
    handle: std::thread::JoinHandle<std::io::Result<u64>>,
}

impl IntervalLogThread {
    /// Start a writer for `path` with `pool` spare interval sets shaped
    /// like `tags`; returns the loop's handoff.
    pub fn start(
        path: &Path,
        tags: &'static [&'static str],
        pool: usize,
    ) -> std::io::Result<(IntervalLogThread, IntervalHandoff)> {
        Self::start_tapped(Some(path), tags, pool, None)
    }

    /// Like [`IntervalLogThread::start`], with the log optional (`None`:
    /// only `tap` sees the intervals) and each interval shown to `tap`.
    pub fn start_tapped(
        path: Option<&Path>,
        tags: &'static [&'static str],
        pool: usize,
        mut tap: Option<IntervalTap>,
    ) -> std::io::Result<(IntervalLogThread, IntervalHandoff)> {
        let file = path.map(std::fs::File::create).transpose()?;
        let make = || {
            Box::new(IntervalSet {
                tags,
                histograms: tags.iter().map(|_| new_histogram()).collect(),
                start: Duration::ZERO,
                length: Duration::ZERO,
            })
        };
        let (full_tx, full_rx) = crossbeam_channel::bounded::<Box<IntervalSet>>(pool + 1);
        let (empty_tx, empty_rx) = crossbeam_channel::bounded::<Box<IntervalSet>>(pool + 1);
        for _ in 0..pool {
            empty_tx.send(make()).expect("fresh channel has room");
        }
        let handle = std::thread::Builder::new()
            .name("hlog-writer".into())
            .spawn(move || {
                let Some(file) = file else {
                    let mut seen = 0u64;
                    while let Ok(mut set) = crate::poll::recv(&full_rx, WRITER_NAP) {
                        if let Some(t) = tap.as_mut() {
                            t(&set);
                        }
                        for h in set.histograms.iter_mut() {
                            h.reset();
                        }
                        seen += 1;
                        let _ = empty_tx.try_send(set);
                    }
                    return Ok(seen);
                };
                let mut out = std::io::BufWriter::new(file);
                let mut serializer = V2DeflateSerializer::new();
                let mut builder = IntervalLogWriterBuilder::new();
                builder.add_comment("neurostimd latency interval log; values in ns");
                builder.with_start_time(std::time::SystemTime::now());
                let mut log = builder.begin_log_with(&mut out, &mut serializer)?;
                let mut written = 0u64;
                while let Ok(mut set) = crate::poll::recv(&full_rx, WRITER_NAP) {
                    if let Some(t) = tap.as_mut() {
                        t(&set);
                    }
                    for (tag, h) in set.tags.iter().zip(set.histograms.iter_mut()) {
                        log.write_histogram(h, set.start, set.length, Tag::new(tag))
                            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                        h.reset();
                    }
                    written += 1;
                    // The loop may have finished; a closed pool is fine.
                    let _ = empty_tx.try_send(set);
                }
                drop(log);
                out.flush()?;
                Ok(written)
            })?;
        Ok((
            IntervalLogThread { handle },
            IntervalHandoff {
                full: full_tx,
                empty: empty_rx,
                current: make(),
            },
        ))
    }

    /// Wait for the writer to drain (after [`IntervalHandoff::finish`]);
    /// returns the number of intervals written.
    pub fn join(self) -> std::io::Result<u64> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the interval log writer panicked")))
    }
}

/// Write `name.hgrm` (µs) into `dir`.
pub fn write_hgrm(dir: &Path, name: &str, h: &Histogram<u64>) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{name}.hgrm"));
    std::fs::write(&path, percentile_distribution(h, 1000.0))?;
    Ok(path)
}

/// An objective with all its parameters (the rate schedule included, which
/// the objective's own serialisation leaves out), for `objective.json`.
pub fn objective_json(o: &crate::policy::Objective) -> serde_json::Value {
    serde_json::json!({
        "kind": o.kind.name(),
        "settle_ms": o.settle_ms,
        "rate_schedule": o.rate.steps().iter().map(|(t, hz)| serde_json::json!({"at_ms": t, "hz": hz})).collect::<Vec<_>>(),
        "reference": o.reference,
        "max_isi_ms": o.max_isi_ms,
        "min_rate_hz": o.min_rate_hz,
        "ceiling_mv": o.ceiling_mv,
    })
}

/// Write `name` (JSON) into `dir`.
pub fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

/// Write `summary.json` into `dir`.
pub fn write_summary(dir: &Path, summary: &impl Serialize) -> std::io::Result<PathBuf> {
    let path = dir.join("summary.json");
    let text = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(&path, text + "\n")?;
    Ok(path)
}

/// `neurostimd report DIR...`: the runs' key figures side by side.
pub fn render(dirs: &[PathBuf]) -> Result<String, String> {
    let mut runs = Vec::new();
    for d in dirs {
        let p = d.join("summary.json");
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        runs.push((d.display().to_string(), v));
    }
    let rows: &[(&str, &str)] = &[
        ("plant", "/plant"),
        ("policy", "/policy"),
        ("objective", "/objective"),
        ("clock", "/clock"),
        ("samples", "/samples"),
        ("plant time s", "/plant_time_s"),
        ("wall time s", "/wall_time_s"),
        ("objective error", "/quality/objective_error"),
        ("error unit", "/quality/objective_error_unit"),
        ("spikes (scored)", "/quality/spikes"),
        ("rate Hz", "/quality/rate_hz"),
        ("bursts", "/quality/bursts"),
        ("charge nC/cm2", "/charge_delivered_nc_cm2"),
        ("safety interventions", "/interventions_total"),
        ("plans adopted", "/plans_adopted"),
        ("plan misses", "/plan_misses"),
        ("lost samples", "/lost_samples"),
        ("records dropped", "/records_dropped"),
        ("overruns", "/overruns"),
        ("wake-up p50 us", "/latency/wakeup_jitter/p50_us"),
        ("wake-up p99 us", "/latency/wakeup_jitter/p99_us"),
        ("wake-up p99.9 us", "/latency/wakeup_jitter/p999_us"),
        ("wake-up max us", "/latency/wakeup_jitter/max_us"),
        (
            "sample->command p50 us",
            "/latency/sample_to_command/p50_us",
        ),
        (
            "sample->command p99 us",
            "/latency/sample_to_command/p99_us",
        ),
        (
            "sample->command p99.9",
            "/latency/sample_to_command/p999_us",
        ),
        (
            "sample->command max us",
            "/latency/sample_to_command/max_us",
        ),
        ("plan latency p99 us", "/latency/plan_latency/p99_us"),
        ("decision age p99 us", "/latency/decision_age/p99_us"),
        ("forecast time p99 us", "/latency/forecast_time/p99_us"),
        ("mlockall", "/realtime/mlockall"),
        ("SCHED_FIFO", "/realtime/sched_fifo"),
        ("pinned", "/realtime/pinned"),
        ("others off its CPU", "/realtime/others_excluded"),
        ("CPU latency request", "/realtime/cpu_dma_latency"),
        ("stop", "/stop"),
        ("fault", "/fault"),
    ];
    let width = runs.iter().map(|(n, _)| n.len()).max().unwrap_or(8).max(10);
    let mut s = format!("{:<24}", "");
    for (name, _) in &runs {
        s.push_str(&format!(" {name:>width$}"));
    }
    s.push('\n');
    for &(label, ptr) in rows {
        s.push_str(&format!("{label:<24}"));
        for (_, v) in &runs {
            let cell = match v.pointer(ptr) {
                Some(serde_json::Value::Number(n)) => match n.as_f64() {
                    Some(x) if x.fract() != 0.0 => format!("{x:.3}"),
                    _ => n.to_string(),
                },
                Some(serde_json::Value::String(t)) => t.clone(),
                Some(serde_json::Value::Null) | None => "-".into(),
                Some(other) => other.to_string(),
            };
            s.push_str(&format!(" {cell:>width$}"));
        }
        s.push('\n');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn percentile_distribution_has_hdrhistograms_layout() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let text = percentile_distribution(&h, 1000.0);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines.next().unwrap(), "");
        let body: Vec<&str> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        let first: Vec<&str> = body[0].split_whitespace().collect();
        assert_eq!(first.len(), 4);
        assert_eq!(first[2], "1");
        let last: Vec<&str> = body.last().unwrap().split_whitespace().collect();
        assert_eq!(last.len(), 3, "the 100th percentile line has no 1/(1-p)");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        let median = body
            .iter()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f[1].parse::<f64>().unwrap() >= 0.5)
            .unwrap();
        assert!(
            (median[0].parse::<f64>().unwrap() - 5000.0).abs() < 10.0,
            "{median:?}"
        );
        assert!(text.contains(", Total count    =        10000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        let max: f64 = text
            .split("#[Max     =")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!((max - 10_000.0).abs() < 10.0, "max {max}");
    }

    #[test]
    fn interval_log_round_trips_through_hdrhistograms_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.hlog");
        static TAGS: [&str; 2] = ["a", "b"];
        let (thread, mut handoff) = IntervalLogThread::start(&path, &TAGS, 2).unwrap();
        let mut recorded = 0u64;
        for k in 0..5u64 {
            for v in 0..100u64 {
                handoff.current().histograms[0].record(1000 + v).unwrap();
                handoff.current().histograms[1].record(50 + k).unwrap();
                recorded += 1;
            }
            handoff.rotate(Duration::from_secs(k + 1));
            std::thread::sleep(Duration::from_millis(5));
        }
        handoff.finish(Duration::from_secs(6));
        let intervals = thread.join().unwrap();
        assert!(intervals >= 2);
        let bytes = std::fs::read(&path).unwrap();
        let mut d = Deserializer::new();
        let mut total = [0u64; 2];
        for entry in IntervalLogIterator::new(&bytes) {
            if let LogEntry::Interval(ilh) = entry.unwrap() {
                let raw = base64_decode(ilh.encoded_histogram());
                let h: Histogram<u64> = d.deserialize(&mut raw.as_slice()).unwrap();
                let which = if ilh.tag().unwrap().as_str() == "a" {
                    0
                } else {
                    1
                };
                total[which] += h.len();
            }
        }
        assert_eq!(
            total,
            [recorded, recorded],
            "every recorded value is in the log"
        );
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = table.iter().position(|&t| t == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        out
    }
}

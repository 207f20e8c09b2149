//! Recordings in the Open Ephys binary layout, so that neo, SpikeInterface
//! and the Open Ephys tools read a closed-loop session without conversion
//! (DESIGN §7).
//!
//! ```text
//! DIR/
//!   neurostimd.json                       sidecar: config, model card, versions, counts
//!   Record Node 100/experiment1/recording1/
//!     structure.oebin
//!     continuous/neurostimd-100.acquired/    V (1 channel)
//!     continuous/neurostimd-100.controller/  command, applied, forecast (3 channels)
//!         continuous.dat  sample_numbers.npy  timestamps.npy
//!     events/neurostimd-100.events/TTL/
//!         sample_numbers.npy  timestamps.npy  states.npy  full_words.npy
//!     forecasts/forecasts.npy  forecasts/sample_numbers.npy
//!     events.jsonl                           every event with its name and text
//! ```
//!
//! The recorder runs on the loop's record-consumer thread, never on the
//! real-time thread. Data are buffered in memory and written at each flush
//! interval, whole frames per write; the `.npy` headers (fixed 128 bytes)
//! are rewritten with the new lengths after each flush. A crash therefore
//! loses at most one flush interval, and `neurostimd recover` makes what is
//! on disk consistent again (see [`recover`]).

mod layout;
pub mod reader;
mod recover;

pub use layout::{event_line_names, EventLine, NODE_DIR};
pub use reader::{Recording, RecordingError};
pub use recover::{recover, RecoverReport};

use crate::npy::fixed_header;
use crate::safety::Cause;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One sample as the loop saw and answered it.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    pub index: u64,
    pub t_ms: f64,
    pub v_mv: f64,
    /// The current the plant reported as applied during the sample.
    pub applied: f64,
    /// What the policy asked for, and what the limiter let through.
    pub requested: f64,
    pub command: f64,
    /// The rule that changed the request, if any.
    pub cause: Option<Cause>,
    /// What the plan in use forecast for the end of this sample's model
    /// step, mV (NaN without a plan).
    pub forecast: f32,
    /// The loop put its own current in place of the plan's (MPC's spike
    /// reflex): every forecast made before this sample assumed another
    /// current from here on; with `control.guard.score_off_plan = false`
    /// the guard's forecast monitor stops scoring them here (a forecast is
    /// then judged only on the currents it was asked about).
    pub off_plan: bool,
}

/// Records are equal when every field is: the forecast bit for bit, so
/// that "no forecast" (NaN) equals itself (reproducibility checks compare
/// whole runs).
impl PartialEq for Record {
    fn eq(&self, o: &Record) -> bool {
        self.index == o.index
            && self.t_ms.to_bits() == o.t_ms.to_bits()
            && self.v_mv.to_bits() == o.v_mv.to_bits()
            && self.applied.to_bits() == o.applied.to_bits()
            && self.requested.to_bits() == o.requested.to_bits()
            && self.command.to_bits() == o.command.to_bits()
            && self.cause == o.cause
            && self.forecast.to_bits() == o.forecast.to_bits()
            && self.off_plan == o.off_plan
    }
}

/// What the planner and the trainer tell the record consumer (not the
/// real-time thread: these may allocate).
#[derive(Debug)]
pub enum Note {
    /// A planning tick's forecast over the horizon (mV, step 1 first, one
    /// value every `dt_ms`) from the window ending at `base_index` (plant
    /// time `t_ms`): the model's own (for the recording and the drift
    /// monitor) and the bias-corrected one the planner optimised against
    /// (for `--trace-out`'s forecasts CSV and `neurostimd plot`). One note
    /// carries both, so there is one hand-off and one drop count.
    Forecast {
        base_index: u64,
        t_ms: f64,
        dt_ms: f64,
        model: Box<[f32]>,
        corrected: Box<[f32]>,
    },
    /// The model's forecast (bias-corrected as the plan's was) of the
    /// currents the loop applied over the horizon after `base_index`, made
    /// once they were known: for the guard with `control.guard.forecasts =
    /// "applied"` only.
    Hindcast {
        base_index: u64,
        corrected: Box<[f32]>,
    },
    /// The planner took a new model before planning from `base_index`.
    ModelSwapped { base_index: u64, label: String },
    /// Anything else worth an event: stamped with the newest sample.
    Event { line: EventLine, text: String },
}

/// A recording that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("recording {0}: the directory already holds a recording (choose a new one)")]
    Exists(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecordError + '_ {
    move |error| RecordError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// How and where to record.
#[derive(Clone, Debug)]
pub struct RecordingSetup {
    pub dir: PathBuf,
    pub sample_rate_hz: f64,
    /// Unit of stimulation currents (the plant's).
    pub current_units: String,
    /// Horizon of the per-tick forecasts (0: no forecaster).
    pub t_out: usize,
    /// Model step of the forecasts, ms.
    pub forecast_dt_ms: f64,
    pub flush_interval: Duration,
    /// `fdatasync` after each flush (survives power loss, not only a
    /// crashed process; costs a disk round trip per flush).
    pub fsync: bool,
    /// The int16 scales: full scale of V (mV) and of currents.
    pub v_range_mv: f64,
    pub i_range: f64,
    /// Config, model card, versions: written into `neurostimd.json`.
    pub sidecar: serde_json::Value,
}

/// What a finished recording holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RecordingCounts {
    pub samples: u64,
    pub forecasts: u64,
    pub events: u64,
    pub flushes: u64,
    /// Samples the loop could not hand over (the recording is incomplete
    /// if this is not zero).
    pub records_dropped: u64,
    /// Forecast rows the planner could not hand over.
    pub forecasts_dropped: u64,
    /// Values outside the int16 range, stored at full scale.
    pub clipped: u64,
}

/// One `.npy` file that grows: a fixed header rewritten at each flush.
struct GrowingNpy {
    path: PathBuf,
    file: File,
    descr: &'static str,
    /// Trailing dimensions (empty for 1-D).
    row_shape: Vec<usize>,
    rows: u64,
    buf: Vec<u8>,
    pending_rows: u64,
}

impl GrowingNpy {
    fn create(
        path: PathBuf,
        descr: &'static str,
        row_shape: Vec<usize>,
    ) -> Result<GrowingNpy, RecordError> {
        let mut file = File::create(&path).map_err(io_err(&path))?;
        let mut shape = vec![0];
        shape.extend_from_slice(&row_shape);
        file.write_all(&fixed_header(descr, &shape))
            .map_err(io_err(&path))?;
        Ok(GrowingNpy {
            path,
            file,
            descr,
            row_shape,
            rows: 0,
            buf: Vec::with_capacity(1 << 16),
            pending_rows: 0,
        })
    }

    fn push_row(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pending_rows += 1;
    }

    /// Write what is buffered (whole rows), then the header that counts it.
    fn flush(&mut self) -> Result<(), RecordError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        self.file.write_all(&self.buf).map_err(io_err(&self.path))?;
        self.buf.clear();
        self.rows += self.pending_rows;
        self.pending_rows = 0;
        let mut shape = vec![self.rows as usize];
        shape.extend_from_slice(&self.row_shape);
        self.file
            .write_all_at(&fixed_header(self.descr, &shape), 0)
            .map_err(io_err(&self.path))
    }

    fn sync(&self) -> Result<(), RecordError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

/// One continuous stream: interleaved int16 frames and the per-sample
/// sample numbers and timestamps.
struct Continuous {
    dat_path: PathBuf,
    dat: File,
    dat_buf: Vec<u8>,
    samples: GrowingNpy,
    times: GrowingNpy,
}

impl Continuous {
    fn create(dir: &Path) -> Result<Continuous, RecordError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dat_path = dir.join("continuous.dat");
        Ok(Continuous {
            dat: File::create(&dat_path).map_err(io_err(&dat_path))?,
            dat_path,
            dat_buf: Vec::with_capacity(1 << 16),
            samples: GrowingNpy::create(dir.join("sample_numbers.npy"), "<i8", vec![])?,
            times: GrowingNpy::create(dir.join("timestamps.npy"), "<f8", vec![])?,
        })
    }

    fn push(&mut self, frame: &[i16], sample: i64, t_s: f64) {
        for x in frame {
            self.dat_buf.extend_from_slice(&x.to_le_bytes());
        }
        self.samples.push_row(&sample.to_le_bytes());
        self.times.push_row(&t_s.to_le_bytes());
    }

    fn flush(&mut self) -> Result<(), RecordError> {
        self.dat
            .write_all(&self.dat_buf)
            .map_err(io_err(&self.dat_path))?;
        self.dat_buf.clear();
        self.samples.flush()?;
        self.times.flush()
    }

    fn sync(&self) -> Result<(), RecordError> {
        self.dat.sync_data().map_err(io_err(&self.dat_path))?;
        self.samples.sync()?;
        self.times.sync()
    }
}

/// Value that marks "no forecast" in the int16 forecast channel (the
/// per-tick `forecasts.npy` holds the forecasts at full precision).
pub const NO_FORECAST: i16 = i16::MIN;

/// Writes one recording. Lives on the record-consumer thread.
pub struct Recorder {
    setup: RecordingSetup,
    root: PathBuf,
    acquired: Continuous,
    controller: Continuous,
    ev_samples: GrowingNpy,
    ev_times: GrowingNpy,
    ev_states: GrowingNpy,
    ev_words: GrowingNpy,
    fc_rows: GrowingNpy,
    fc_samples: GrowingNpy,
    log_path: PathBuf,
    log: File,
    log_buf: String,
    v_bit: f64,
    i_bit: f64,
    /// Line states (bit n−1 = line n), for `full_words`.
    word: u64,
    last_flush: Instant,
    period_s: f64,
    last_index: u64,
    counts: RecordingCounts,
    stim_on: bool,
    cause_on: [bool; Cause::ALL.len()],
}

impl Recorder {
    /// Create the directory tree, the headers, `structure.oebin` and the
    /// sidecar. Refuses a directory that already holds a recording.
    pub fn create(setup: RecordingSetup) -> Result<Recorder, RecordError> {
        let root = setup.dir.clone();
        if root.join("neurostimd.json").exists() || root.join(NODE_DIR).exists() {
            return Err(RecordError::Exists(root.display().to_string()));
        }
        let rec_dir = root.join(NODE_DIR);
        std::fs::create_dir_all(&rec_dir).map_err(io_err(&rec_dir))?;
        let v_bit = setup.v_range_mv / 32767.0;
        let i_bit = setup.i_range / 32767.0;
        let oebin = layout::structure_oebin(&setup, v_bit, i_bit);
        let oebin_path = rec_dir.join("structure.oebin");
        std::fs::write(
            &oebin_path,
            serde_json::to_vec_pretty(&oebin).expect("json"),
        )
        .map_err(io_err(&oebin_path))?;
        let acquired = Continuous::create(&rec_dir.join("continuous").join(layout::ACQUIRED))?;
        let controller = Continuous::create(&rec_dir.join("continuous").join(layout::CONTROLLER))?;
        let ev_dir = rec_dir.join("events").join(layout::EVENTS).join("TTL");
        std::fs::create_dir_all(&ev_dir).map_err(io_err(&ev_dir))?;
        let fc_dir = rec_dir.join("forecasts");
        std::fs::create_dir_all(&fc_dir).map_err(io_err(&fc_dir))?;
        let log_path = rec_dir.join("events.jsonl");
        let period_s = 1.0 / setup.sample_rate_hz;
        let r = Recorder {
            acquired,
            controller,
            ev_samples: GrowingNpy::create(ev_dir.join("sample_numbers.npy"), "<i8", vec![])?,
            ev_times: GrowingNpy::create(ev_dir.join("timestamps.npy"), "<f8", vec![])?,
            ev_states: GrowingNpy::create(ev_dir.join("states.npy"), "<i2", vec![])?,
            ev_words: GrowingNpy::create(ev_dir.join("full_words.npy"), "<u8", vec![])?,
            fc_rows: GrowingNpy::create(
                fc_dir.join("forecasts.npy"),
                "<f4",
                vec![setup.t_out.max(1)],
            )?,
            fc_samples: GrowingNpy::create(fc_dir.join("sample_numbers.npy"), "<i8", vec![])?,
            log: File::create(&log_path).map_err(io_err(&log_path))?,
            log_path,
            log_buf: String::new(),
            v_bit,
            i_bit,
            word: 0,
            last_flush: Instant::now(),
            period_s,
            last_index: 0,
            counts: RecordingCounts::default(),
            stim_on: false,
            cause_on: [false; Cause::ALL.len()],
            root,
            setup,
        };
        r.write_sidecar("recording")?;
        Ok(r)
    }

    /// The recording's root directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    fn quantise(&mut self, x: f64, bit: f64) -> i16 {
        let q = (x / bit).round();
        if q > 32767.0 {
            self.counts.clipped += 1;
            32767
        } else if q < -32767.0 {
            self.counts.clipped += 1;
            -32767
        } else if q.is_nan() {
            NO_FORECAST
        } else {
            q as i16
        }
    }

    /// One sample as the loop answered it; `forecast`: what the model in
    /// use predicted for it (NaN if nothing did). Derives the stimulation
    /// and intervention events.
    pub fn push(&mut self, r: &Record) {
        let v = self.quantise(r.v_mv, self.v_bit);
        let cmd = self.quantise(r.command, self.i_bit);
        let applied = self.quantise(r.applied, self.i_bit);
        let fc = if r.forecast.is_finite() {
            self.quantise(r.forecast as f64, self.v_bit)
        } else {
            NO_FORECAST
        };
        let t_s = r.t_ms / 1000.0;
        self.acquired.push(&[v], r.index as i64, t_s);
        self.controller
            .push(&[cmd, applied, fc], r.index as i64, t_s);
        self.last_index = r.index;
        self.counts.samples += 1;
        let on = r.command != 0.0;
        if on != self.stim_on {
            self.stim_on = on;
            self.edge(r.index, t_s, EventLine::Stimulation, on, "");
        }
        for (k, cause) in Cause::ALL.iter().enumerate() {
            let active = r.cause == Some(*cause);
            if active != self.cause_on[k] {
                self.cause_on[k] = active;
                self.edge(
                    r.index,
                    t_s,
                    EventLine::Intervention(*cause),
                    active,
                    cause.name(),
                );
            }
        }
    }

    /// A planning tick's forecast over the horizon (mV, step 1 first),
    /// made from the window ending at sample `base_index`.
    pub fn forecast(&mut self, base_index: u64, values: &[f32]) {
        if values.len() != self.setup.t_out {
            return;
        }
        let buf: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.fc_rows.push_row(&buf);
        self.fc_samples.push_row(&(base_index as i64).to_le_bytes());
        self.counts.forecasts += 1;
    }

    /// Forecast rows lost on the way (counted into the sidecar).
    pub fn forecasts_dropped(&mut self, n: u64) {
        self.counts.forecasts_dropped += n;
    }

    /// A state change of a TTL line, with its text in `events.jsonl`.
    pub fn edge(&mut self, index: u64, t_s: f64, line: EventLine, on: bool, text: &str) {
        let n = line.number();
        let bit = 1u64 << (n - 1);
        if on {
            self.word |= bit;
        } else {
            self.word &= !bit;
        }
        let state = if on { n as i16 } else { -(n as i16) };
        self.ev_samples.push_row(&(index as i64).to_le_bytes());
        self.ev_times.push_row(&t_s.to_le_bytes());
        self.ev_states.push_row(&state.to_le_bytes());
        self.ev_words.push_row(&self.word.to_le_bytes());
        self.counts.events += 1;
        let entry = serde_json::json!({
            "sample_number": index,
            "timestamp_s": t_s,
            "line": n,
            "state": on,
            "event": line.name(),
            "text": text,
        });
        self.log_buf.push_str(&entry.to_string());
        self.log_buf.push('\n');
    }

    /// A one-off event (model swap, objective change, retraining step): a
    /// rising edge at the sample and a falling edge at the next, so
    /// readers that pair edges (neo) see it as a one-sample epoch.
    /// `index`: the sample it refers to, or the newest recorded one.
    pub fn pulse(&mut self, index: Option<u64>, line: EventLine, text: &str) {
        let index = index.unwrap_or(self.last_index);
        let t = index as f64 * self.period_s;
        self.edge(index, t, line, true, text);
        self.edge(index + 1, t + self.period_s, line, false, "");
    }

    /// Flush if the interval has passed. Called after each block.
    pub fn maybe_flush(&mut self) -> Result<(), RecordError> {
        if self.last_flush.elapsed() >= self.setup.flush_interval {
            self.flush()?;
        }
        Ok(())
    }

    /// Write everything buffered; data first, then the headers that count
    /// it, so a crash leaves at worst data the headers do not yet count.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.last_flush = Instant::now();
        self.acquired.flush()?;
        self.controller.flush()?;
        self.ev_samples.flush()?;
        self.ev_times.flush()?;
        self.ev_states.flush()?;
        self.ev_words.flush()?;
        self.fc_rows.flush()?;
        self.fc_samples.flush()?;
        if !self.log_buf.is_empty() {
            self.log
                .write_all(self.log_buf.as_bytes())
                .map_err(io_err(&self.log_path))?;
            self.log_buf.clear();
        }
        if self.setup.fsync {
            self.acquired.sync()?;
            self.controller.sync()?;
            for f in [
                &self.ev_samples,
                &self.ev_times,
                &self.ev_states,
                &self.ev_words,
                &self.fc_rows,
                &self.fc_samples,
            ] {
                f.sync()?;
            }
        }
        self.counts.flushes += 1;
        Ok(())
    }

    fn write_sidecar(&self, status: &str) -> Result<(), RecordError> {
        let mut doc = self.setup.sidecar.clone();
        if !doc.is_object() {
            doc = serde_json::json!({});
        }
        let m = doc.as_object_mut().expect("object");
        m.insert("format".into(), "neurostimd-recording".into());
        m.insert("format_version".into(), 1.into());
        m.insert("status".into(), status.into());
        m.insert(
            "complete".into(),
            (status == "complete" && self.counts.records_dropped == 0).into(),
        );
        m.insert(
            "counts".into(),
            serde_json::to_value(&self.counts).expect("json"),
        );
        m.insert(
            "recording".into(),
            serde_json::json!({
                "path": NODE_DIR,
                "sample_rate_hz": self.setup.sample_rate_hz,
                "v_bit_mv": self.v_bit,
                "current_bit": self.i_bit,
                "current_units": self.setup.current_units,
                "no_forecast_value": NO_FORECAST,
                "forecast_t_out": self.setup.t_out,
                "forecast_dt_ms": self.setup.forecast_dt_ms,
                "flush_interval_ms": self.setup.flush_interval.as_secs_f64() * 1000.0,
                "event_lines": event_line_names(),
            }),
        );
        let path = self.root.join("neurostimd.json");
        let tmp = self.root.join("neurostimd.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("json"))
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Close the recording: open TTL lines are closed at the last sample,
    /// everything is flushed and the sidecar states the counts.
    pub fn finish(mut self, records_dropped: u64) -> Result<RecordingCounts, RecordError> {
        let idx = self.last_index + 1;
        let t = idx as f64 * self.period_s;
        for n in 1..=64u32 {
            if self.word & (1u64 << (n - 1)) != 0 {
                if let Some(line) = EventLine::from_number(n) {
                    self.edge(idx, t, line, false, "end of recording");
                }
            }
        }
        self.counts.records_dropped = records_dropped;
        self.flush()?;
        self.acquired.sync()?;
        self.controller.sync()?;
        self.write_sidecar("complete")?;
        Ok(self.counts.clone())
    }
}

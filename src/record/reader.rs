//! Reading a recording back: for `--plant replay`, `model eval
//! --recording`, `recover` and the tests. Reads what `structure.oebin`
//! declares, so scales come from the file, not from assumptions.

use super::layout::{ACQUIRED, CONTROLLER, NODE_DIR};
use crate::npy::parse_header;
use std::path::{Path, PathBuf};

/// The highest sample rate a recording may declare (1 MHz): far above any
/// current-clamp amplifier, and it keeps periods representable.
const MAX_SAMPLE_RATE_HZ: f64 = 1e6;

/// A recording that cannot be read, naming the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: {what}")]
    Format { path: String, what: String },
}

fn fmt_err(path: &Path, what: impl Into<String>) -> RecordingError {
    RecordingError::Format {
        path: path.display().to_string(),
        what: what.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, RecordingError> {
    std::fs::read(path).map_err(|error| RecordingError::Io {
        path: path.display().to_string(),
        error,
    })
}

/// Read a 1-D `.npy` of 8-byte values (`<i8` or `<f8`) that its header
/// fully counts.
pub(crate) fn read_npy_8(path: &Path, descr: &str) -> Result<Vec<[u8; 8]>, RecordingError> {
    let bytes = read(path)?;
    let h = parse_header(&bytes).map_err(|w| fmt_err(path, w))?;
    if h.descr != descr {
        return Err(fmt_err(
            path,
            format!("dtype {} (expected {descr})", h.descr),
        ));
    }
    let want = h.data_bytes(8).map_err(|w| fmt_err(path, w))?;
    let body = &bytes[h.data_start..];
    if body.len() < want {
        return Err(fmt_err(
            path,
            format!(
                "header counts {} values but the file holds {} (run `neurostimd recover` on the recording)",
                want / 8,
                body.len() / 8
            ),
        ));
    }
    Ok(body[..want]
        .chunks_exact(8)
        .map(|c| c.try_into().expect("8 bytes"))
        .collect())
}

/// One continuous stream, scaled to its units.
#[derive(Clone, Debug)]
pub struct Stream {
    pub names: Vec<String>,
    pub units: Vec<String>,
    pub bit: Vec<f64>,
    /// Per channel, in the channel's unit.
    pub data: Vec<Vec<f64>>,
    pub raw: Vec<Vec<i16>>,
    pub sample_numbers: Vec<i64>,
    pub timestamps: Vec<f64>,
}

/// A recording as the daemon wrote it.
#[derive(Clone, Debug)]
pub struct Recording {
    pub root: PathBuf,
    pub sample_rate_hz: f64,
    pub sidecar: serde_json::Value,
    pub acquired: Stream,
    pub controller: Stream,
}

impl Recording {
    /// The recording folder (holding `structure.oebin`) under `root`.
    pub fn folder(root: &Path) -> PathBuf {
        root.join(NODE_DIR)
    }

    pub fn open(root: &Path) -> Result<Recording, RecordingError> {
        let dir = Self::folder(root);
        let oebin_path = dir.join("structure.oebin");
        if !oebin_path.exists() {
            return Err(fmt_err(
                root,
                format!("not a neurostimd recording: {NODE_DIR}/structure.oebin is missing"),
            ));
        }
        let oebin: serde_json::Value = serde_json::from_slice(&read(&oebin_path)?)
            .map_err(|e| fmt_err(&oebin_path, e.to_string()))?;
        let sidecar_path = root.join("neurostimd.json");
        let sidecar = match std::fs::read(&sidecar_path) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| fmt_err(&sidecar_path, e.to_string()))?
            }
            Err(_) => serde_json::Value::Null,
        };
        let streams = oebin["continuous"]
            .as_array()
            .ok_or_else(|| fmt_err(&oebin_path, "no `continuous` list"))?;
        let load = |folder: &str| load_stream(&dir, &oebin_path, streams, folder);
        let (acquired, acquired_rate) = load(ACQUIRED)?;
        let (controller, rate) = load(CONTROLLER)?;
        if rate != acquired_rate {
            return Err(fmt_err(
                &oebin_path,
                format!("{ACQUIRED} at {acquired_rate} Hz but {CONTROLLER} at {rate} Hz: the streams must share one clock"),
            ));
        }
        if !controller.names.iter().any(|n| n == "applied") {
            return Err(fmt_err(
                &oebin_path,
                format!("{CONTROLLER}: no `applied` channel (the stimulation the plant applied): replay and training need it"),
            ));
        }
        Ok(Recording {
            root: root.to_path_buf(),
            sample_rate_hz: rate,
            sidecar,
            acquired,
            controller,
        })
    }

    pub fn len(&self) -> usize {
        self.acquired.sample_numbers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Membrane potential, mV.
    pub fn v_mv(&self) -> &[f64] {
        &self.acquired.data[0]
    }

    fn channel(&self, name: &str) -> Option<&[f64]> {
        let k = self.controller.names.iter().position(|n| n == name)?;
        Some(&self.controller.data[k])
    }

    /// Stimulation the plant reported as applied.
    pub fn applied(&self) -> &[f64] {
        self.channel("applied").unwrap_or(&[])
    }

    pub fn command(&self) -> &[f64] {
        self.channel("command").unwrap_or(&[])
    }

    pub fn forecast(&self) -> &[f64] {
        self.channel("forecast").unwrap_or(&[])
    }

    pub fn sample_period_ms(&self) -> f64 {
        1000.0 / self.sample_rate_hz
    }
}

/// One continuous stream of the recording: its declaration in
/// `structure.oebin`, checked, and its files, read and scaled. Returns the
/// stream and its sample rate.
fn load_stream(
    dir: &Path,
    oebin_path: &Path,
    streams: &[serde_json::Value],
    folder: &str,
) -> Result<(Stream, f64), RecordingError> {
    let info = streams
        .iter()
        .find(|s| s["folder_name"].as_str().map(|f| f.trim_end_matches('/')) == Some(folder))
        .ok_or_else(|| fmt_err(oebin_path, format!("no continuous stream `{folder}`")))?;
    let rate = info["sample_rate"]
        .as_f64()
        .ok_or_else(|| fmt_err(oebin_path, format!("{folder}: no sample_rate")))?;
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_SAMPLE_RATE_HZ) {
        return Err(fmt_err(
            oebin_path,
            format!("{folder}: sample_rate {rate} must be > 0 and at most {MAX_SAMPLE_RATE_HZ} Hz"),
        ));
    }
    let (names, units, bit) = channels(info, oebin_path, folder)?;
    let sdir = dir.join("continuous").join(folder);
    let sn: Vec<i64> = read_npy_8(&sdir.join("sample_numbers.npy"), "<i8")?
        .into_iter()
        .map(i64::from_le_bytes)
        .collect();
    let ts: Vec<f64> = read_npy_8(&sdir.join("timestamps.npy"), "<f8")?
        .into_iter()
        .map(f64::from_le_bytes)
        .collect();
    let dat_path = sdir.join("continuous.dat");
    let dat = read(&dat_path)?;
    let ch = names.len();
    let n = sn.len();
    // n is bounded by a file's size, ch by the header's channel list:
    // their product fits unless the header is absurd.
    let frame_bytes = n.saturating_mul(ch * 2);
    if dat.len() < frame_bytes || ts.len() != n {
        return Err(fmt_err(
            &sdir,
            format!(
                "{n} sample numbers, {} timestamps, {} frames of data: run `neurostimd recover`",
                ts.len(),
                dat.len() / (2 * ch)
            ),
        ));
    }
    let mut raw = vec![Vec::with_capacity(n); ch];
    for frame in dat[..frame_bytes].chunks_exact(2 * ch) {
        for (c, x) in frame.chunks_exact(2).enumerate() {
            raw[c].push(i16::from_le_bytes([x[0], x[1]]));
        }
    }
    let data = raw
        .iter()
        .zip(&bit)
        .map(|(r, b)| {
            r.iter()
                .map(|&x| {
                    if x == super::NO_FORECAST {
                        f64::NAN
                    } else {
                        x as f64 * b
                    }
                })
                .collect()
        })
        .collect();
    Ok((
        Stream {
            names,
            units,
            bit,
            data,
            raw,
            sample_numbers: sn,
            timestamps: ts,
        },
        rate,
    ))
}

/// Per channel: name, unit, scale.
type Channels = (Vec<String>, Vec<String>, Vec<f64>);

/// Names, units and scales of a stream's channels; every scale must be
/// usable.
fn channels(
    info: &serde_json::Value,
    oebin_path: &Path,
    folder: &str,
) -> Result<Channels, RecordingError> {
    let chans = info["channels"]
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| fmt_err(oebin_path, format!("{folder}: no channels")))?;
    let names: Vec<String> = chans
        .iter()
        .map(|c| c["channel_name"].as_str().unwrap_or("").to_string())
        .collect();
    let units = chans
        .iter()
        .map(|c| c["units"].as_str().unwrap_or("").to_string())
        .collect();
    let bit: Vec<f64> = chans
        .iter()
        .map(|c| c["bit_volts"].as_f64().unwrap_or(f64::NAN))
        .collect();
    if let Some(k) = bit.iter().position(|b| !(b.is_finite() && *b != 0.0)) {
        return Err(fmt_err(
            oebin_path,
            format!(
                "{folder}: channel {k} ({}) has no usable bit_volts (a finite, non-zero scale)",
                names[k]
            ),
        ));
    }
    Ok((names, units, bit))
}

//! `neurostimd recover DIR`: make a recording whose writer died (crash,
//! `kill -9`, power loss) readable again.
//!
//! The writer appends data first and rewrites each `.npy` header after, so
//! after a crash the files may hold more rows than their headers count, the
//! streams may differ by a partial flush, and a file may end in a partial
//! row. Recovery counts whole rows from the file sizes, cuts every stream to
//! the samples that all of them hold (the streams are sample-aligned), cuts
//! the events and forecasts to whole rows, rewrites the headers and marks
//! the sidecar `recovered`.

use super::layout::{ACQUIRED, CONTROLLER, EVENTS};
use super::reader::RecordingError;
use super::Recording;
use crate::npy::{fixed_header, parse_header, FIXED_HEADER_LEN};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What recovery found and kept.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecoverReport {
    /// Samples kept in each continuous stream.
    pub samples: u64,
    /// Samples the headers counted before recovery (acquired stream).
    pub samples_counted_before: u64,
    pub events: u64,
    pub forecasts: u64,
    /// Bytes cut from the ends of files (partial rows, unmatched samples).
    pub bytes_cut: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RecordingError + '_ {
    move |error| RecordingError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Rows a data file holds (after a fixed header), and its header's count.
fn npy_rows(path: &Path, row_bytes: u64) -> Result<(u64, u64, Vec<usize>, String), RecordingError> {
    let mut head = vec![0u8; FIXED_HEADER_LEN];
    let f = std::fs::File::open(path).map_err(io(path))?;
    f.read_exact_at(&mut head, 0).map_err(io(path))?;
    let h = parse_header(&head).map_err(|what| RecordingError::Format {
        path: path.display().to_string(),
        what,
    })?;
    if h.data_start != FIXED_HEADER_LEN {
        return Err(RecordingError::Format {
            path: path.display().to_string(),
            what: "not written by neurostimd (header is not 128 bytes)".into(),
        });
    }
    let size = f.metadata().map_err(io(path))?.len();
    let rows = size.saturating_sub(FIXED_HEADER_LEN as u64) / row_bytes;
    Ok((
        rows,
        h.shape.first().copied().unwrap_or(0) as u64,
        h.shape,
        h.descr,
    ))
}

/// Cut a `.npy` to `rows` rows and write its header.
fn set_npy_rows(
    path: &Path,
    rows: u64,
    row_bytes: u64,
    cut: &mut u64,
) -> Result<(), RecordingError> {
    let (_, _, mut shape, descr) = npy_rows(path, row_bytes)?;
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let size = f.metadata().map_err(io(path))?.len();
    let keep = FIXED_HEADER_LEN as u64 + rows * row_bytes;
    *cut += size.saturating_sub(keep);
    f.set_len(keep).map_err(io(path))?;
    shape[0] = rows as usize;
    f.write_all_at(&fixed_header(&descr, &shape), 0)
        .map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

pub fn recover(root: &Path) -> Result<RecoverReport, RecordingError> {
    let dir = Recording::folder(root);
    let oebin = dir.join("structure.oebin");
    if !oebin.exists() {
        return Err(RecordingError::Format {
            path: root.display().to_string(),
            what: "not a neurostimd recording (no structure.oebin)".into(),
        });
    }
    let mut cut = 0u64;
    // Samples every continuous file holds.
    let streams = [(ACQUIRED, 1u64), (CONTROLLER, 3u64)];
    let mut samples = u64::MAX;
    let mut counted_before = 0;
    for (k, (folder, ch)) in streams.iter().enumerate() {
        let s = dir.join("continuous").join(folder);
        let dat = s.join("continuous.dat");
        let frames = std::fs::metadata(&dat).map_err(io(&dat))?.len() / (2 * ch);
        let (sn, sn_hdr, _, _) = npy_rows(&s.join("sample_numbers.npy"), 8)?;
        let (ts, _, _, _) = npy_rows(&s.join("timestamps.npy"), 8)?;
        if k == 0 {
            counted_before = sn_hdr;
        }
        samples = samples.min(frames).min(sn).min(ts);
    }
    for (folder, ch) in streams {
        let s = dir.join("continuous").join(folder);
        let dat = s.join("continuous.dat");
        let f = OpenOptions::new()
            .write(true)
            .open(&dat)
            .map_err(io(&dat))?;
        let size = f.metadata().map_err(io(&dat))?.len();
        let keep = samples * 2 * ch;
        cut += size - keep;
        f.set_len(keep).map_err(io(&dat))?;
        f.sync_all().map_err(io(&dat))?;
        set_npy_rows(&s.join("sample_numbers.npy"), samples, 8, &mut cut)?;
        set_npy_rows(&s.join("timestamps.npy"), samples, 8, &mut cut)?;
    }
    // Events: four parallel files.
    let ev = dir.join("events").join(EVENTS).join("TTL");
    let ev_files = [
        ("sample_numbers.npy", 8u64),
        ("timestamps.npy", 8),
        ("states.npy", 2),
        ("full_words.npy", 8),
    ];
    let mut events = u64::MAX;
    for (name, bytes) in ev_files {
        events = events.min(npy_rows(&ev.join(name), bytes)?.0);
    }
    for (name, bytes) in ev_files {
        set_npy_rows(&ev.join(name), events, bytes, &mut cut)?;
    }
    // Forecasts: rows of t_out float32.
    let fc = dir.join("forecasts");
    let (_, _, shape, _) = npy_rows(&fc.join("forecasts.npy"), 4)?;
    let row = 4 * shape.get(1).copied().unwrap_or(1).max(1) as u64;
    let forecasts = npy_rows(&fc.join("forecasts.npy"), row)?
        .0
        .min(npy_rows(&fc.join("sample_numbers.npy"), 8)?.0);
    set_npy_rows(&fc.join("forecasts.npy"), forecasts, row, &mut cut)?;
    set_npy_rows(&fc.join("sample_numbers.npy"), forecasts, 8, &mut cut)?;
    // A partial last line of the event log is dropped.
    let log = dir.join("events.jsonl");
    if let Ok(text) = std::fs::read(&log) {
        if let Some(last_nl) = text.iter().rposition(|&b| b == b'\n') {
            if last_nl + 1 != text.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&log)
                    .map_err(io(&log))?;
                f.set_len(last_nl as u64 + 1).map_err(io(&log))?;
                cut += (text.len() - last_nl - 1) as u64;
            }
        }
    }
    let report = RecoverReport {
        samples,
        samples_counted_before: counted_before,
        events,
        forecasts,
        bytes_cut: cut,
    };
    // The sidecar says what happened.
    let side = root.join("neurostimd.json");
    let mut doc: serde_json::Value = std::fs::read(&side)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let clean = doc["status"] == "complete" && cut == 0;
    if let (Some(m), false) = (doc.as_object_mut(), clean) {
        let was = m.get("status").cloned().unwrap_or_default();
        m.insert("status".into(), "recovered".into());
        m.insert("complete".into(), false.into());
        m.insert("status_before_recovery".into(), was);
        m.insert(
            "recovered".into(),
            serde_json::to_value(&report).expect("json"),
        );
    }
    std::fs::write(&side, serde_json::to_vec_pretty(&doc).expect("json")).map_err(io(&side))?;
    Ok(report)
}

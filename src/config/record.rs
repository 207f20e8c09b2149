//! `[record]`: where and how runs are recorded, raw and validated.

use super::{positive, ConfigError, Cx, RecordConfig};
use crate::units::{Current, Quantity, Time, Voltage};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecord {
    pub(super) dir: std::path::PathBuf,
    pub(super) flush_interval: Quantity<Time>,
    pub(super) fsync: bool,
    pub(super) v_range: Quantity<Voltage>,
    pub(super) i_range: Quantity<Current>,
}

impl RawRecord {
    /// `[record]`; the current range must hold every command `safety`
    /// allows.
    pub(super) fn validate(
        &self,
        cx: &Cx,
        safety: &crate::safety::Limits,
    ) -> Result<RecordConfig, ConfigError> {
        let r = self;
        positive(r.flush_interval.get()).map_err(|m| cx.err("record.flush_interval", m))?;
        if r.flush_interval.get() > 60_000.0 {
            return Err(cx.err(
                "record.flush_interval",
                format!(
                    "{} ms: a crash would lose more than a minute of data; at most 60 s",
                    r.flush_interval.get()
                ),
            ));
        }
        positive(r.v_range.get()).map_err(|m| cx.err("record.v_range", m))?;
        positive(r.i_range.get()).map_err(|m| cx.err("record.i_range", m))?;
        if r.i_range.get() < safety.max_amplitude {
            return Err(cx.err(
                "record.i_range",
                format!(
                    "{} uA/cm2 is below safety.max_amplitude ({} uA/cm2): commands would be clipped in the recording",
                    r.i_range.get(),
                    safety.max_amplitude
                ),
            ));
        }
        Ok(RecordConfig {
            dir: (!r.dir.as_os_str().is_empty()).then(|| r.dir.clone()),
            flush_interval_ms: r.flush_interval.get(),
            fsync: r.fsync,
            v_range_mv: r.v_range.get(),
            i_range: r.i_range.get(),
        })
    }
}

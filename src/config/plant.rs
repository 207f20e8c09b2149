//! `[plant]`: which plant, and the embedded simulator's and the serial
//! rig's settings, raw as written and validated.

use super::{non_negative, positive, ConfigError, Cx, IntegratorKind, PlantKind, RawParams};
use super::{ScheduledChange, SimConfig, MIN_SAMPLE_PERIOD_MS};
use crate::neuron::integrate::Method;
use crate::units::{Quantity, Time, Voltage};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlant {
    pub(super) kind: PlantKind,
    pub(super) sim: RawSim,
    pub(super) serial: RawSerial,
    pub(super) replay: RawReplay,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplay {
    pub(super) recording: std::path::PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSerial {
    pub(super) port: std::path::PathBuf,
    pub(super) baud: u32,
    pub(super) timeout: Quantity<Time>,
    pub(super) valid_for: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSim {
    pub(super) preset: String,
    pub(super) sample_period: Quantity<Time>,
    pub(super) integrator: IntegratorKind,
    pub(super) dt: Quantity<Time>,
    pub(super) tolerance: f64,
    pub(super) noise_sd: Quantity<Voltage>,
    pub(super) seed: u64,
    #[serde(default)]
    pub(super) overrides: RawParams,
    #[serde(default)]
    pub(super) schedule: Vec<RawChange>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChange {
    pub(super) at: Quantity<Time>,
    pub(super) preset: Option<String>,
    #[serde(default)]
    pub(super) overrides: RawParams,
}

impl RawSim {
    /// `[plant.sim]`: the preset with its overrides, the sample period and
    /// the integrator, and the schedule of parameter changes.
    pub(super) fn validate(&self, cx: &Cx) -> Result<SimConfig, ConfigError> {
        let s = self;
        let mut params = cx.preset(&s.preset, "plant.sim.preset")?;
        cx.check(&s.overrides, "plant.sim.overrides")?;
        s.overrides.apply(&mut params);

        let sp = s.sample_period.get();
        positive(sp).map_err(|m| cx.err("plant.sim.sample_period", m))?;
        if sp < MIN_SAMPLE_PERIOD_MS {
            return Err(cx.err(
                "plant.sim.sample_period",
                format!("{sp} ms is shorter than {MIN_SAMPLE_PERIOD_MS} ms (1 MHz)"),
            ));
        }
        if sp > 10.0 {
            return Err(cx.err(
                "plant.sim.sample_period",
                format!("{sp} ms is longer than 10 ms; the loop needs at least 100 Hz"),
            ));
        }
        let method = match s.integrator {
            IntegratorKind::Rk4 => {
                let dt = s.dt.get();
                positive(dt).map_err(|m| cx.err("plant.sim.dt", m))?;
                if dt > sp {
                    return Err(cx.err(
                        "plant.sim.dt",
                        format!(
                            "integration step {dt} ms is larger than plant.sim.sample_period \
                             ({sp} ms); it must be <= the sample period"
                        ),
                    ));
                }
                Method::Rk4 { dt_ms: dt }
            }
            IntegratorKind::Dopri5 => {
                if !(1e-10..=1e-3).contains(&s.tolerance) {
                    return Err(cx.err(
                        "plant.sim.tolerance",
                        format!("{} is outside 1e-10 ..= 1e-3", s.tolerance),
                    ));
                }
                Method::Dopri5 {
                    tol: s.tolerance,
                    max_dt_ms: sp,
                }
            }
        };
        non_negative(s.noise_sd.get()).map_err(|m| cx.err("plant.sim.noise_sd", m))?;

        let mut schedule = Vec::with_capacity(s.schedule.len());
        let mut current = params;
        let mut last_at = -1.0;
        for (i, c) in s.schedule.iter().enumerate() {
            let at_key = format!("plant.sim.schedule[{i}].at");
            let at = c.at.get();
            non_negative(at).map_err(|m| cx.err(&at_key, m))?;
            if at <= last_at {
                return Err(cx.err(
                    &at_key,
                    format!("{at} ms is not after the previous change ({last_at} ms); list changes in time order"),
                ));
            }
            last_at = at;
            let mut label = Vec::new();
            if let Some(name) = &c.preset {
                current = cx.preset(name, &format!("plant.sim.schedule[{i}].preset"))?;
                label.push(format!("preset {name}"));
            }
            cx.check(&c.overrides, &format!("plant.sim.schedule[{i}].overrides"))?;
            c.overrides.apply(&mut current);
            label.extend(c.overrides.set_keys().iter().map(|k| k.to_string()));
            if label.is_empty() {
                return Err(cx.err(
                    &format!("plant.sim.schedule[{i}]"),
                    "a scheduled change needs a preset or overrides".into(),
                ));
            }
            schedule.push(ScheduledChange {
                at_ms: at,
                label: label.join(", "),
                params: current,
            });
        }
        Ok(SimConfig {
            preset: s.preset.clone(),
            params,
            sample_period_ms: sp,
            method,
            noise_sd_mv: s.noise_sd.get(),
            seed: s.seed,
            schedule,
        })
    }
}

impl RawSerial {
    /// `[plant.serial]`, for a rig sampled every `sp` ms whose current
    /// scale is checked against `max_amplitude` at the handshake.
    pub(super) fn validate(
        &self,
        cx: &Cx,
        sp: f64,
        max_amplitude: f64,
    ) -> Result<crate::plant::serial::SerialConfig, ConfigError> {
        let se = self;
        positive(se.timeout.get()).map_err(|m| cx.err("plant.serial.timeout", m))?;
        positive(se.valid_for.get()).map_err(|m| cx.err("plant.serial.valid_for", m))?;
        if se.valid_for.get() > 1000.0 {
            return Err(cx.err(
                "plant.serial.valid_for",
                format!("{} ms is longer than 1 s; a silent daemon must not leave current flowing that long", se.valid_for.get()),
            ));
        }
        Ok(crate::plant::serial::SerialConfig {
            port: se.port.clone(),
            baud: se.baud,
            timeout_ms: se.timeout.get(),
            valid_for_us: (se.valid_for.get() * 1000.0).round() as u32,
            sample_period_ms: sp,
            max_amplitude,
        })
    }
}

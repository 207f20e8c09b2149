//! `[plant]`: which plant, and the embedded simulator's and the serial
//! rig's settings, raw as written and validated.

use super::{finite, non_negative, positive, AsF64, ConfigError, Cx, IntegratorKind, PlantKind};
use super::{RawParams, ScheduledChange, SimConfig, MIN_SAMPLE_PERIOD_MS};
use crate::neuron::cell::{CellDraw, Ranges, CA1_KEYS, POSPISCHIL_KEYS};
use crate::neuron::integrate::Method;
use crate::neuron::{pospischil, Params};
use crate::plant::sim::Family;
use crate::units::{Conductance, Current, Quantity, Time, Voltage};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Longest `plant.sim.actuation_delay`, ms.
const MAX_ACTUATION_DELAY_MS: f64 = 50.0;
/// Widest `plant.sim.randomize` voltage range, mV.
const MAX_SHIFT_MV: f64 = 10.0;

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

/// `plant.sim.family`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum FamilyName {
    Ca1,
    Pospischil,
}

macro_rules! pospischil_fields {
    ($( $field:ident : $ty:ty => $rule:ident ),* $(,)?) => {
        /// `[plant.sim.pospischil]`: overrides of a Pospischil class's
        /// parameters. Absent keys keep the published value.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawPospischil { $( $field: Option<$ty>, )* }

        impl RawPospischil {
            /// The first key set, if any (to name it in errors).
            fn first_key(&self) -> Option<&'static str> {
                $( if self.$field.is_some() { return Some(stringify!($field)); } )*
                None
            }

            /// Range-check and apply every key present.
            fn apply(&self, p: &mut pospischil::Params, cx: &Cx) -> Result<(), ConfigError> {
                $(
                    if let Some(v) = self.$field {
                        let key = concat!("plant.sim.pospischil.", stringify!($field));
                        $rule(v.f()).map_err(|m| cx.err(key, m))?;
                        p.$field = v.f();
                    }
                )*
                Ok(())
            }
        }
    };
}

pospischil_fields! {
    cm: f64 => positive,
    g_leak: Quantity<Conductance> => non_negative,
    e_leak: Quantity<Voltage> => finite,
    g_na: Quantity<Conductance> => non_negative,
    e_na: Quantity<Voltage> => finite,
    g_kd: Quantity<Conductance> => non_negative,
    e_k: Quantity<Voltage> => finite,
    v_t: Quantity<Voltage> => finite,
    g_m: Quantity<Conductance> => non_negative,
    tau_max: Quantity<Time> => positive,
    g_l: Quantity<Conductance> => non_negative,
    g_t: Quantity<Conductance> => non_negative,
    v_x: Quantity<Voltage> => finite,
    e_ca: Quantity<Voltage> => finite,
    i_app: Quantity<Current> => finite,
}

/// `[plant.sim.randomize]`: a seeded cell around the preset.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRandomize {
    pub(super) cell_seed: u64,
    pub(super) cm: f64,
    pub(super) conductances: f64,
    pub(super) theta_p: Quantity<Voltage>,
    pub(super) v_t: Quantity<Voltage>,
    #[serde(default)]
    pub(super) ranges: BTreeMap<String, f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSim {
    pub(super) family: FamilyName,
    pub(super) preset: String,
    pub(super) sample_period: Quantity<Time>,
    pub(super) integrator: IntegratorKind,
    pub(super) dt: Quantity<Time>,
    pub(super) tolerance: f64,
    pub(super) noise_sd: Quantity<Voltage>,
    pub(super) seed: u64,
    pub(super) actuation_delay: Quantity<Time>,
    #[serde(default)]
    pub(super) overrides: RawParams,
    #[serde(default)]
    pub(super) pospischil: RawPospischil,
    pub(super) randomize: RawRandomize,
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
    /// `[plant.sim]`: the family and preset with their overrides, the
    /// sample period and the integrator, the schedule of parameter changes,
    /// the randomised cell and the actuation delay.
    pub(super) fn validate(&self, cx: &Cx) -> Result<SimConfig, ConfigError> {
        let s = self;
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
        let method = s.method(cx, sp)?;
        non_negative(s.noise_sd.get()).map_err(|m| cx.err("plant.sim.noise_sd", m))?;
        let actuation_delay_samples = s.delay_samples(cx, sp)?;
        let (mut params, mut family, mut schedule) = match s.family {
            FamilyName::Ca1 => {
                if let Some(k) = s.pospischil.first_key() {
                    return Err(cx.err(
                        &format!("plant.sim.pospischil.{k}"),
                        "Pospischil parameters need plant.sim.family = \"pospischil\"".into(),
                    ));
                }
                let mut params = cx.preset(&s.preset, "plant.sim.preset")?;
                cx.check(&s.overrides, "plant.sim.overrides")?;
                s.overrides.apply(&mut params);
                let schedule = s.schedule(cx, params)?;
                (params, Family::Ca1, schedule)
            }
            FamilyName::Pospischil => (Params::default(), s.pospischil_family(cx)?, Vec::new()),
        };
        let cell = s.randomize.validate(cx, s.family)?;
        if let Some(c) = &cell {
            match &mut family {
                Family::Ca1 => {
                    c.apply_ca1(&mut params);
                    for ch in &mut schedule {
                        c.apply_ca1(&mut ch.params);
                    }
                }
                Family::Pospischil { params, .. } => c.apply_pospischil(params),
            }
        }
        Ok(SimConfig {
            preset: s.preset.clone(),
            params,
            family,
            cell,
            sample_period_ms: sp,
            method,
            noise_sd_mv: s.noise_sd.get(),
            seed: s.seed,
            schedule,
            actuation_delay_samples,
        })
    }

    fn method(&self, cx: &Cx, sp: f64) -> Result<Method, ConfigError> {
        Ok(match self.integrator {
            IntegratorKind::Rk4 => {
                let dt = self.dt.get();
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
                if !(1e-10..=1e-3).contains(&self.tolerance) {
                    return Err(cx.err(
                        "plant.sim.tolerance",
                        format!("{} is outside 1e-10 ..= 1e-3", self.tolerance),
                    ));
                }
                Method::Dopri5 {
                    tol: self.tolerance,
                    max_dt_ms: sp,
                }
            }
        })
    }

    /// `plant.sim.actuation_delay` in whole samples of `sp` ms.
    fn delay_samples(&self, cx: &Cx, sp: f64) -> Result<usize, ConfigError> {
        let key = "plant.sim.actuation_delay";
        let d = self.actuation_delay.get();
        non_negative(d).map_err(|m| cx.err(key, m))?;
        if d > MAX_ACTUATION_DELAY_MS {
            return Err(cx.err(
                key,
                format!("{d} ms is longer than {MAX_ACTUATION_DELAY_MS} ms"),
            ));
        }
        let n = (d / sp).round();
        if (d / sp - n).abs() > 1e-6 {
            return Err(cx.err(
                key,
                format!(
                    "{d} ms is not a whole number of sample periods ({sp} ms); use {} ms or {} ms",
                    n * sp,
                    (n + if d / sp > n { 1.0 } else { -1.0 }) * sp
                ),
            ));
        }
        Ok(n as usize)
    }

    /// The Pospischil class named by `plant.sim.preset` with
    /// `[plant.sim.pospischil]` laid over it; CA1 overrides and a schedule
    /// are refused, naming their key.
    fn pospischil_family(&self, cx: &Cx) -> Result<Family, ConfigError> {
        let class = match self.preset.as_str() {
            "rs" => pospischil::Class::Rs,
            "fs" => pospischil::Class::Fs,
            "ib" => pospischil::Class::Ib,
            "lts" => pospischil::Class::Lts,
            other => {
                return Err(cx.err(
                    "plant.sim.preset",
                    format!(
                        "`{other}` is not a Pospischil class; with plant.sim.family = \
                         \"pospischil\" use rs, fs, ib or lts"
                    ),
                ))
            }
        };
        if let Some(k) = self.overrides.set_keys().first() {
            return Err(cx.err(
                &format!("plant.sim.overrides.{k}"),
                "these are CA1 parameters; a Pospischil cell takes its overrides in \
                 [plant.sim.pospischil]"
                    .into(),
            ));
        }
        if !self.schedule.is_empty() {
            return Err(cx.err(
                "plant.sim.schedule",
                "scheduled changes switch CA1 presets; not available with \
                 plant.sim.family = \"pospischil\""
                    .into(),
            ));
        }
        let mut params = pospischil::Params::for_class(class);
        self.pospischil.apply(&mut params, cx)?;
        Ok(Family::Pospischil { class, params })
    }

    /// The CA1 schedule, each change starting from the parameters in force
    /// before it (`start` at t = 0).
    fn schedule(&self, cx: &Cx, start: Params) -> Result<Vec<ScheduledChange>, ConfigError> {
        let mut schedule = Vec::with_capacity(self.schedule.len());
        let mut current = start;
        let mut last_at = -1.0;
        for (i, c) in self.schedule.iter().enumerate() {
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
        Ok(schedule)
    }
}

/// A relative range: 0 <= r < 1 (a factor must stay positive).
fn relative_range(r: f64) -> Result<(), String> {
    non_negative(r)?;
    if r >= 1.0 {
        return Err(format!(
            "{r} is a range of ±{}%; it must be below 1 (100%) so the parameter stays positive",
            r * 100.0
        ));
    }
    Ok(())
}

impl RawRandomize {
    /// The configured ranges, for cells drawn from other seeds
    /// (`train.data.cell_seeds`).
    pub(super) fn ranges(&self) -> Ranges {
        Ranges {
            cm: self.cm,
            conductances: self.conductances,
            theta_p_mv: self.theta_p.get(),
            v_t_mv: self.v_t.get(),
            per_key: self.ranges.clone(),
        }
    }

    /// The cell drawn from `cell_seed` for `family` (`None` for seed 0),
    /// every range checked and named.
    fn validate(&self, cx: &Cx, family: FamilyName) -> Result<Option<CellDraw>, ConfigError> {
        let at = "plant.sim.randomize";
        relative_range(self.cm).map_err(|m| cx.err(&format!("{at}.cm"), m))?;
        relative_range(self.conductances).map_err(|m| cx.err(&format!("{at}.conductances"), m))?;
        for (key, v) in [("theta_p", self.theta_p.get()), ("v_t", self.v_t.get())] {
            non_negative(v).map_err(|m| cx.err(&format!("{at}.{key}"), m))?;
            if v > MAX_SHIFT_MV {
                return Err(cx.err(
                    &format!("{at}.{key}"),
                    format!("±{v} mV is wider than ±{MAX_SHIFT_MV} mV"),
                ));
            }
        }
        let keys: &[(&'static str, _)] = match family {
            FamilyName::Ca1 => &CA1_KEYS,
            FamilyName::Pospischil => &POSPISCHIL_KEYS,
        };
        for (key, r) in &self.ranges {
            let full = format!("{at}.ranges.{key}");
            let known: Vec<&str> = keys
                .iter()
                .filter(|k| k.1 == crate::neuron::cell::KeyRole::Conductance)
                .map(|k| k.0)
                .collect();
            if !known.contains(&key.as_str()) {
                return Err(cx.err(
                    &full,
                    format!(
                        "`{key}` is not a conductance of this family; one of {}",
                        known.join(", ")
                    ),
                ));
            }
            relative_range(*r).map_err(|m| cx.err(&full, m))?;
        }
        if self.cell_seed == 0 {
            return Ok(None);
        }
        Ok(Some(CellDraw::new(self.cell_seed, self.ranges(), keys)))
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

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use crate::plant::sim::Family;

    fn invalid(text: &str) -> ConfigError {
        Config::from_str_named("t.toml", text).unwrap_err()
    }

    #[test]
    fn bad_randomisation_ranges_name_their_key() {
        for (text, key) in [
            ("conductances = -0.1", "plant.sim.randomize.conductances"),
            ("conductances = 1.0", "plant.sim.randomize.conductances"),
            ("cm = nan", "plant.sim.randomize.cm"),
            ("cm = 1.5", "plant.sim.randomize.cm"),
            ("theta_p = \"-1 mV\"", "plant.sim.randomize.theta_p"),
            ("v_t = \"20 mV\"", "plant.sim.randomize.v_t"),
            (
                "ranges = { g_nap = 1.2 }",
                "plant.sim.randomize.ranges.g_nap",
            ),
            ("ranges = { g_kd = 0.1 }", "plant.sim.randomize.ranges.g_kd"),
        ] {
            let e = invalid(&format!("[plant.sim.randomize]\ncell_seed = 3\n{text}\n"));
            assert_eq!(e.key(), Some(key), "{text}: {e}");
            assert!(e.to_string().starts_with("t.toml:3:"), "{e}");
        }
        // Checked even for seed 0, so a mistake shows before it matters.
        let e = invalid("[plant.sim.randomize]\nconductances = 2\n");
        assert!(e.to_string().contains("below 1 (100%)"), "{e}");
    }

    #[test]
    fn actuation_delay_is_whole_samples_within_50_ms() {
        let ok = |t: &str| Config::from_str_named("t.toml", t).unwrap().sim;
        assert_eq!(ok("").actuation_delay_samples, 0);
        let c = ok("[plant.sim]\nactuation_delay = \"2 ms\"\n");
        assert_eq!(
            (c.actuation_delay_samples, c.actuation_delay_ms()),
            (20, 2.0)
        );
        for (text, msg) in [
            ("actuation_delay = \"2.05 ms\"", "use 2 ms or 2.1 ms"),
            ("actuation_delay = \"60 ms\"", "longer than 50 ms"),
            ("actuation_delay = \"-1 ms\"", "negative"),
        ] {
            let e = invalid(&format!("[plant.sim]\n{text}\n"));
            assert_eq!(e.key(), Some("plant.sim.actuation_delay"), "{e}");
            assert!(e.to_string().contains(msg), "{e}");
        }
    }

    #[test]
    fn pospischil_family_takes_its_classes_and_refuses_ca1_settings() {
        let c = Config::from_str_named(
            "t.toml",
            "[plant.sim]\nfamily = \"pospischil\"\npreset = \"lts\"\n\
             [plant.sim.pospischil]\ni_app = \"0.5 uA/cm2\"\ng_t = 0.3\n",
        )
        .unwrap()
        .sim;
        let Family::Pospischil { class, params } = c.family else {
            panic!("{:?}", c.family)
        };
        assert_eq!(class, crate::neuron::pospischil::Class::Lts);
        assert_eq!((params.i_app, params.g_t, params.g_kd), (0.5, 0.3, 4.0));
        for (text, key) in [
            ("[plant.sim]\nfamily = \"pospischil\"\n", "plant.sim.preset"),
            (
                "[plant.sim]\nfamily = \"pospischil\"\npreset = \"rs\"\n[plant.sim.overrides]\ng_m = 0.5\n",
                "plant.sim.overrides.g_m",
            ),
            (
                "[plant.sim]\nfamily = \"pospischil\"\npreset = \"rs\"\n[[plant.sim.schedule]]\nat = \"1 s\"\npreset = \"bursting\"\n",
                "plant.sim.schedule",
            ),
            ("[plant.sim.pospischil]\ng_kd = 3\n", "plant.sim.pospischil.g_kd"),
            (
                "[plant.sim]\nfamily = \"pospischil\"\npreset = \"rs\"\n[plant.sim.pospischil]\ng_kd = -3\n",
                "plant.sim.pospischil.g_kd",
            ),
            ("[plant.sim]\nfamily = \"hh\"\n", "plant.sim.family"),
        ] {
            assert_eq!(invalid(text).key(), Some(key), "{text}");
        }
    }

    #[test]
    fn a_randomised_pospischil_cell_keeps_its_class_currents() {
        let c = Config::from_str_named(
            "t.toml",
            "[plant.sim]\nfamily = \"pospischil\"\npreset = \"ib\"\n\
             [plant.sim.randomize]\ncell_seed = 1001\n",
        )
        .unwrap()
        .sim;
        let Family::Pospischil { params, .. } = c.family else {
            panic!()
        };
        let ib = crate::neuron::pospischil::Params::for_class(crate::neuron::pospischil::Class::Ib);
        assert_ne!(params, ib);
        assert!(params.g_l > 0.8 * ib.g_l && params.g_l < 1.2 * ib.g_l);
        assert_eq!((params.g_t, params.e_k), (0.0, ib.e_k));
        assert_eq!(c.cell.as_ref().unwrap().draws.len(), 8);
    }
}

//! Configuration: raw TOML → validated, typed [`Config`].
//!
//! The documented file `config/neurostimd.toml` is compiled in as the
//! defaults (it also holds the neuron presets, so presets are data, not code
//! paths). A user file is laid over it key by key. Deserialisation checks
//! only shapes and units (`Raw*` types, unknown keys refused); validation then
//! enforces ranges and cross-field rules and derives what the daemon uses.
//! Every error names the file, the line where it can be found and the key.

mod control;
mod plant;
mod record;
mod retrain;
mod service;
mod train;

use crate::neuron::Params;
use crate::units::{Conductance, Current, Quantity, Time, Voltage};
use control::{RawControl, RawMpc, RawObjective, RawPid, RawWave};
use plant::RawPlant;
use record::RawRecord;
use retrain::RawRetrain;
use serde::Deserialize;
use service::RawService;
use std::collections::BTreeMap;
use std::path::Path;
use train::RawTrain;

/// The documented defaults, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/neurostimd.toml");
/// Longest `control.compute_delay`, ms.
const MAX_COMPUTE_DELAY_MS: f64 = 100.0;
/// Shortest `plant.sim.sample_period`, ms (1 MHz): below it buffers sized
/// in samples per second stop being reasonable allocations.
const MIN_SAMPLE_PERIOD_MS: f64 = 1e-3;
/// Longest `run.duration`, s (100 days): sample counts stay exact.
const MAX_DURATION_S: f64 = 100.0 * 86_400.0;
const DEFAULT_NAME: &str = "config/neurostimd.toml (built-in defaults)";
/// Name under which command-line settings are reported.
pub const CLI_NAME: &str = "command line";

/// A configuration problem a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {error}")]
    Read { path: String, error: std::io::Error },
    /// `location` is `file:line` when the line is known, else `file`.
    #[error("{location}: {key}: {message}")]
    Invalid {
        location: String,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about (e.g. `plant.sim.dt`).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}

// ---------------------------------------------------------------- raw layer

/// Values that are plain numbers or quantities, read as f64 in their unit.
trait AsF64: Copy {
    fn f(self) -> f64;
}
impl AsF64 for f64 {
    fn f(self) -> f64 {
        self
    }
}
impl<D: crate::units::Dimension> AsF64 for Quantity<D> {
    fn f(self) -> f64 {
        self.get()
    }
}

fn finite(x: f64) -> Result<(), String> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(format!("{x} is not a finite number"))
    }
}
fn non_negative(x: f64) -> Result<(), String> {
    finite(x)?;
    if x < 0.0 {
        Err(format!("{x} is negative; it must be >= 0"))
    } else {
        Ok(())
    }
}
/// A conductance (mS/cm²): at most 1e4, a thousand times the largest in
/// the models, so a typo (1e308) is refused here, not found as a
/// non-finite simulator state at the first sample.
fn conductance(x: f64) -> Result<(), String> {
    non_negative(x)?;
    if x > 1e4 {
        return Err(format!("{x} is above 1e4 mS/cm2"));
    }
    Ok(())
}
/// A membrane or reversal potential (mV): within ±1000 mV.
fn potential(x: f64) -> Result<(), String> {
    finite(x)?;
    if x.abs() > 1000.0 {
        return Err(format!("{x} mV is outside -1000 ..= 1000 mV"));
    }
    Ok(())
}
fn positive(x: f64) -> Result<(), String> {
    finite(x)?;
    if x <= 0.0 {
        Err(format!("{x} must be > 0"))
    } else {
        Ok(())
    }
}

macro_rules! param_fields {
    ($( $field:ident : $ty:ty => $rule:ident ),* $(,)?) => {
        /// Parameter overrides of the CA1 model: a preset table, a plant's
        /// `overrides` or a scheduled change. Absent keys leave the value.
        #[derive(Clone, Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawParams { $( pub $field: Option<$ty>, )* }

        impl RawParams {
            /// Names of all keys, for documentation checks.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// Keys this table sets, in declaration order.
            pub fn set_keys(&self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$field.is_some() { out.push(stringify!($field)); } )*
                out
            }

            pub fn apply(&self, p: &mut Params) {
                $( if let Some(v) = self.$field { p.$field = v.f(); } )*
            }

            /// Range-check every key present; on error, (key, message).
            fn check(&self, at: &str) -> Result<(), (String, String)> {
                $(
                    if let Some(v) = self.$field {
                        $rule(v.f()).map_err(|m| (format!("{at}.{}", stringify!($field)), m))?;
                    }
                )*
                Ok(())
            }
        }
    };
}

param_fields! {
    cm: f64 => positive,
    g_l: Quantity<Conductance> => conductance,
    e_l: Quantity<Voltage> => potential,
    g_na: Quantity<Conductance> => conductance,
    e_na: Quantity<Voltage> => potential,
    g_nap: Quantity<Conductance> => conductance,
    theta_p: Quantity<Voltage> => potential,
    g_kdr: Quantity<Conductance> => conductance,
    e_k: Quantity<Voltage> => potential,
    g_a: Quantity<Conductance> => conductance,
    g_m: Quantity<Conductance> => conductance,
    g_ca: Quantity<Conductance> => conductance,
    e_ca: Quantity<Voltage> => potential,
    g_kca: Quantity<Conductance> => conductance,
    a_c: f64 => positive,
    g_kahp: Quantity<Conductance> => conductance,
    a_q: f64 => positive,
    nu: f64 => non_negative,
    tau_ca: Quantity<Time> => positive,
    tau_b: Quantity<Time> => positive,
    tau_z: Quantity<Time> => positive,
    tau_r: Quantity<Time> => positive,
    tau_c: Quantity<Time> => positive,
    tau_q: Quantity<Time> => positive,
    i_app: Quantity<Current> => finite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlantKind {
    Sim,
    Serial,
    Replay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntegratorKind {
    Rk4,
    Dopri5,
}

/// How the loop is clocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// One sample per sample period of wall-clock time.
    Paced,
    /// As fast as possible, in lockstep.
    Free,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    plant: RawPlant,
    run: RawRun,
    control: RawControl,
    objective: RawObjective,
    mpc: RawMpc,
    pid: RawPid,
    open: RawWave<Current>,
    safety: RawSafety,
    train: RawTrain,
    record: RawRecord,
    retrain: RawRetrain,
    service: RawService,
    presets: BTreeMap<String, RawParams>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSafety {
    max_amplitude: Quantity<Current>,
    max_slew: f64,
    max_phase_charge: Quantity<crate::units::Charge>,
    net_charge_tau: Quantity<Time>,
    max_net_charge: Quantity<crate::units::Charge>,
    charge_budget: Quantity<crate::units::Charge>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    duration: Quantity<Time>,
    clock: Clock,
    reports: std::path::PathBuf,
}

/// What every section's validation needs: where each key was written
/// (errors name the file and line) and the presets, resolved.
struct Cx<'a> {
    sources: &'a Sources<'a>,
    presets: BTreeMap<String, Params>,
}

impl<'a> Cx<'a> {
    /// Resolve every preset first: sections refer to them by name.
    fn new(
        sources: &'a Sources<'a>,
        raw: &BTreeMap<String, RawParams>,
    ) -> Result<Self, ConfigError> {
        let mut cx = Cx {
            sources,
            presets: BTreeMap::new(),
        };
        for (name, rp) in raw {
            cx.check(rp, &format!("presets.{name}"))?;
            let mut p = Params::default();
            rp.apply(&mut p);
            cx.presets.insert(name.clone(), p);
        }
        Ok(cx)
    }

    /// An error about `key`, located where it was written.
    fn err(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            location: self.sources.locate(&parse_key_path(key)),
            key: key.to_string(),
            message,
        }
    }

    /// Range-check a parameter table written at `at`.
    fn check(&self, r: &RawParams, at: &str) -> Result<(), ConfigError> {
        r.check(at).map_err(|(k, m)| self.err(&k, m))
    }

    /// The preset `name`, named at `key`.
    fn preset(&self, name: &str, key: &str) -> Result<Params, ConfigError> {
        self.presets.get(name).copied().ok_or_else(|| {
            let known: Vec<&str> = self.presets.keys().map(String::as_str).collect();
            self.err(
                key,
                format!(
                    "no preset named `{name}`; defined presets: {}",
                    known.join(", ")
                ),
            )
        })
    }
}

impl RawRun {
    fn validate(&self, cx: &Cx) -> Result<RunConfig, ConfigError> {
        let d = self.duration.get();
        non_negative(d).map_err(|m| cx.err("run.duration", m))?;
        if d / 1000.0 > MAX_DURATION_S {
            return Err(cx.err(
                "run.duration",
                format!(
                    "{} s is longer than {MAX_DURATION_S} s (100 days)",
                    d / 1000.0
                ),
            ));
        }
        Ok(RunConfig {
            duration_s: if d > 0.0 { Some(d / 1000.0) } else { None },
            clock: self.clock,
            reports: (!self.reports.as_os_str().is_empty()).then(|| self.reports.clone()),
        })
    }
}

impl RawSafety {
    /// Every limit in its safe direction (`Limits::validate`), the error
    /// naming the key.
    fn validate(&self, cx: &Cx) -> Result<crate::safety::Limits, ConfigError> {
        let sf = self;
        let safety = crate::safety::Limits {
            max_amplitude: sf.max_amplitude.get(),
            max_slew: sf.max_slew,
            max_phase_charge: sf.max_phase_charge.get(),
            net_charge_tau: sf.net_charge_tau.get(),
            max_net_charge: sf.max_net_charge.get(),
            charge_budget: sf.charge_budget.get(),
        };
        safety.validate().map_err(|e| {
            let name = e.key().unwrap_or("");
            let full = e.to_string();
            let message = full
                .split_once(" = ")
                .map(|(_, m)| m.to_string())
                .unwrap_or(full);
            cx.err(&format!("safety.{name}"), message)
        })?;
        Ok(safety)
    }
}

// ----------------------------------------------------------- validated layer

// Validated sections live with the layer that uses them; configuration
// only builds them.
pub use crate::plant::sim::{ScheduledChange, SimConfig};
pub use crate::train::settings::{TrainConfig, TrainSource};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunConfig {
    /// None: run until stopped.
    pub duration_s: Option<f64>,
    pub clock: Clock,
    /// Parent directory of per-run reports; `None`: no report by default.
    pub reports: Option<std::path::PathBuf>,
}

/// Recording (validated `[record]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RecordConfig {
    /// Parent of per-run recordings; `None`: record only with `--record`.
    pub dir: Option<std::path::PathBuf>,
    pub flush_interval_ms: f64,
    pub fsync: bool,
    pub v_range_mv: f64,
    pub i_range: f64,
}

/// Onboard retraining (validated `[retrain]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RetrainConfig {
    pub enabled: bool,
    pub state_dir: std::path::PathBuf,
    pub on_drift: bool,
    /// Drift reference: the model's own online error over its first full
    /// window in use (true), or its card's validation RMSE (false).
    pub drift_reference_online: bool,
    pub drift_multiple: f64,
    pub drift_window_ms: f64,
    /// `None`: no periodic retraining.
    pub periodic_ms: Option<f64>,
    pub data_ms: f64,
    pub buffer_ms: f64,
    pub validation: f64,
    pub holdout: f64,
    pub margin: f64,
    pub schedule: crate::train::trainer::Schedule,
    pub stride: usize,
    pub cooldown_ms: f64,
}

/// Where the control thread runs and what it asks the kernel for.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RealtimeConfig {
    pub mlockall: bool,
    /// SCHED_FIFO priority; 0: stay SCHED_OTHER.
    pub priority: i32,
    /// CPU to pin to: `Some(n)`, or `None` for no pinning; "last" is
    /// resolved at start.
    pub cpu: CpuChoice,
    pub prefault_kib: usize,
    /// CPU wake-up latency asked for through `/dev/cpu_dma_latency` while
    /// the loop runs, µs (0: the lowest; keeps the CPUs out of deep idle
    /// states); `None`: do not ask.
    pub cpu_dma_latency_us: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuChoice {
    None,
    Last,
    Index(usize),
}

/// The closed loop (validated `[control]`, `[objective]`, `[mpc]`, `[pid]`,
/// `[open]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ControlConfig {
    pub policy: crate::policy::PolicyKind,
    pub objective: crate::policy::Objective,
    /// The forecaster: `embedded:ca1_lstm` (compiled in) or a file.
    pub model: crate::forecast::ModelSource,
    pub period_ms: f64,
    pub compute_delay_ms: f64,
    pub realtime: RealtimeConfig,
    pub mpc: crate::policy::mpc::MpcConfig,
    pub pid: crate::policy::pid::PidGains,
    pub open: crate::policy::Waveform,
    pub guard: crate::policy::mpc::GuardConfig,
    pub feedback: crate::policy::mpc::FeedbackConfig,
}

/// Where the control API listens.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketChoice {
    /// `$RUNTIME_DIRECTORY/control.sock` under systemd, else `control.sock`
    /// in the run's report directory, else no API.
    Auto,
    Off,
    Path(std::path::PathBuf),
}

/// The service around the loop (validated `[service]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ServiceConfig {
    pub socket: SocketChoice,
    /// File mode of the socket: who may connect (and so steer the loop).
    pub socket_mode: u32,
    /// Prometheus metrics address; `None`: off.
    pub metrics: Option<std::net::SocketAddr>,
    /// Stimulation armed when the loop starts.
    pub start_armed: bool,
}

/// The whole validated configuration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    pub plant_kind: PlantKind,
    pub sim: SimConfig,
    pub serial: crate::plant::serial::SerialConfig,
    pub run: RunConfig,
    pub control: ControlConfig,
    /// Safety limits, validated against the compiled-in hard ceilings.
    pub safety: crate::safety::Limits,
    pub train: TrainConfig,
    pub record: RecordConfig,
    pub retrain: RetrainConfig,
    /// `--plant replay`: the recording to play back.
    pub replay: std::path::PathBuf,
    pub service: ServiceConfig,
    /// Every preset, resolved against the published model.
    pub presets: BTreeMap<String, Params>,
}

/// The table at `path` inside an overlay (as `--set` and command-line flags
/// build them), created empty where missing.
pub fn overlay_at<'a>(root: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    let mut t = root;
    for k in path {
        t = t
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("overlay tables are tables");
    }
    t
}

/// [`overlay_at`] for user-given paths (`--set a.b.c=…`): a segment that
/// already holds a value, not a table, is an error naming the key instead
/// of a panic.
pub fn try_overlay_at<'a>(
    root: &'a mut toml::Table,
    path: &[&str],
) -> Result<&'a mut toml::Table, String> {
    let mut t = root;
    for (depth, k) in path.iter().enumerate() {
        t = t
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| {
                format!(
                    "`{}` is set to a value, so it cannot also hold keys",
                    path[..=depth].join(".")
                )
            })?;
    }
    Ok(t)
}

/// Where the text of a key can be found, to point errors at a line.
struct Sources<'a> {
    files: Vec<(&'a str, &'a str)>,
}

impl Sources<'_> {
    /// `file:line` of the first file (user first) that defines `path`.
    fn locate(&self, path: &[PathSeg]) -> String {
        for (name, text) in self.files.iter().rev() {
            if *name == CLI_NAME {
                if line_of(text, path).is_some() {
                    return CLI_NAME.to_string();
                }
                continue;
            }
            if let Some(line) = line_of(text, path) {
                return format!("{name}:{line}");
            }
        }
        self.files
            .last()
            .map(|(n, _)| n.to_string())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
enum PathSeg {
    Key(String),
    Index(usize),
}

fn parse_key_path(key: &str) -> Vec<PathSeg> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, rest) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(PathSeg::Key(name.to_string()));
        }
        for idx in rest.split('[') {
            if let Ok(i) = idx.trim_end_matches(']').parse() {
                out.push(PathSeg::Index(i));
            }
        }
    }
    out
}

/// 1-based line of the deepest part of `path` present in `text`.
fn line_of(text: &str, path: &[PathSeg]) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut cur: Option<&DeValue> = None;
    let mut table = Some(root.get_ref());
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                let t = table?;
                let (key, value) = t.get_key_value(k.as_str())?;
                span = Some(key.span());
                cur = Some(value.get_ref());
            }
            PathSeg::Index(i) => {
                let arr = cur?.as_array()?;
                let v = arr.get(*i)?;
                span = Some(v.span());
                cur = Some(v.get_ref());
            }
        }
        table = cur.and_then(|v| v.as_table());
    }
    let start = span?.start;
    Some(text[..start.min(text.len())].matches('\n').count() + 1)
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// The built-in defaults.
    pub fn defaults() -> Config {
        Self::from_sources(&[]).expect("the built-in config/neurostimd.toml is valid")
    }

    /// Defaults overlaid with the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            error: source,
        })?;
        Self::from_sources(&[(&name, &text)])
    }

    /// Defaults, overlaid with an optional file, overlaid with settings from
    /// the command line (a TOML table using the same keys), all validated
    /// together so a flag gets the same checks as a config key.
    pub fn load_layered(file: Option<&Path>, cli: &toml::Table) -> Result<Config, ConfigError> {
        Self::load_stack(&[], file, cli)
    }

    /// Defaults, then `layers` (name, TOML text) in order, then `file`,
    /// then the command line; each laid over the ones before.
    pub fn load_stack(
        layers: &[(&str, &str)],
        file: Option<&Path>,
        cli: &toml::Table,
    ) -> Result<Config, ConfigError> {
        let file_text = match file {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    error: source,
                })?,
            )),
            None => None,
        };
        let cli_text = toml::to_string(cli).expect("a TOML table serialises");
        let mut all: Vec<(&str, &str)> = layers.to_vec();
        if let Some((name, text)) = &file_text {
            all.push((name, text));
        }
        all.push((CLI_NAME, &cli_text));
        Self::from_sources(&all)
    }

    /// Defaults overlaid with `text`, reported as coming from `name`.
    pub fn from_str_named(name: &str, text: &str) -> Result<Config, ConfigError> {
        Self::from_sources(&[(name, text)])
    }

    fn from_sources(user: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut files = vec![(DEFAULT_NAME, DEFAULT_CONFIG)];
        files.extend_from_slice(user);
        let sources = Sources { files };
        let mut merged = toml::Table::new();
        for (name, text) in &sources.files {
            let t: toml::Table = toml::from_str(text).map_err(|e| {
                let location = match e.span() {
                    Some(s) => format!("{name}:{}", line_of_offset(text, s.start)),
                    None => name.to_string(),
                };
                ConfigError::Invalid {
                    location,
                    key: "(syntax)".into(),
                    message: e.message().trim().to_string(),
                }
            })?;
            merge(&mut merged, t);
        }
        let raw: RawConfig = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().message().trim().to_string();
            // An unknown key is reported at its parent; point at the key
            // itself when the message names it.
            let mut path = parse_key_path(&key);
            if let Some(unknown) = message
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
            {
                if !key.ends_with(unknown) {
                    path.push(PathSeg::Key(unknown.to_string()));
                }
            }
            let shown_key = path_to_string(&path);
            ConfigError::Invalid {
                location: sources.locate(&path),
                key: shown_key,
                message,
            }
        })?;
        Self::validate(raw, &sources)
    }

    /// Every section, raw → validated, each by its own code (beside its
    /// raw type in `config/`); sections that depend on others get what
    /// they need (the sample period, the safety limits, the simulator).
    fn validate(raw: RawConfig, sources: &Sources) -> Result<Config, ConfigError> {
        let cx = Cx::new(sources, &raw.presets)?;
        let sim = raw.plant.sim.validate(&cx)?;
        let sp = sim.sample_period_ms;
        let run = raw.run.validate(&cx)?;
        let safety = raw.safety.validate(&cx)?;
        let train = raw
            .train
            .validate(&cx, &sim, raw.plant.sim.randomize.ranges())?;
        let control = control::validate_control(&raw, sp, &safety, &cx)?;
        let serial = raw.plant.serial.validate(&cx, sp, safety.max_amplitude)?;
        let record = raw.record.validate(&cx, &safety)?;
        let retrain = raw.retrain.validate(&cx)?;
        if raw.plant.kind == PlantKind::Replay && raw.plant.replay.recording.as_os_str().is_empty()
        {
            return Err(cx.err(
                "plant.replay.recording",
                "plant.kind = \"replay\" needs a recording directory (--recording DIR)".into(),
            ));
        }
        let service = raw.service.validate(&cx)?;
        Ok(Config {
            service,
            plant_kind: raw.plant.kind,
            record,
            retrain,
            replay: raw.plant.replay.recording.clone(),
            serial,
            control,
            sim,
            run,
            safety,
            train,
            presets: cx.presets,
        })
    }

    /// Parameters of a named preset.
    pub fn preset(&self, name: &str) -> Option<Params> {
        self.presets.get(name).copied()
    }
}

fn path_to_string(path: &[PathSeg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            PathSeg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathSeg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neuron::integrate::Method;

    fn invalid(text: &str) -> ConfigError {
        Config::from_str_named("test.toml", text).unwrap_err()
    }

    #[test]
    fn built_in_defaults_match_the_published_model() {
        let c = Config::defaults();
        assert_eq!(c.sim.params, Params::default());
        assert_eq!(c.sim.sample_period_ms, 0.1);
        assert_eq!(
            c.sim.method,
            Method::Dopri5 {
                tol: 1e-6,
                max_dt_ms: 0.1
            }
        );
        assert_eq!(c.run.duration_s, None);
        let b = c.preset("bursting").unwrap();
        assert_eq!(
            (b.g_nap, b.theta_p, b.i_app, b.g_m),
            (0.41, -47.0, 0.5, 1.0)
        );
    }

    #[test]
    fn regular_preset_documents_every_parameter_key() {
        let doc: toml::Table = toml::from_str(DEFAULT_CONFIG).unwrap();
        let regular = doc["presets"]["regular"].as_table().unwrap();
        for k in RawParams::KEYS {
            assert!(regular.contains_key(*k), "presets.regular lacks `{k}`");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = invalid("[plant.sim]\npreset = \"regular\"\nsampel_period = 0.1\n");
        let msg = e.to_string();
        assert_eq!(e.key(), Some("plant.sim.sampel_period"), "{msg}");
        assert!(msg.starts_with("test.toml:3:"), "{msg}");
    }

    #[test]
    fn wrong_unit_is_named() {
        let e = invalid("[plant.sim]\nsample_period = \"0.1 mV\"\n");
        assert_eq!(e.key(), Some("plant.sim.sample_period"));
        let msg = e.to_string();
        assert!(msg.contains("test.toml:2"), "{msg}");
        assert!(msg.contains("is not a time"), "{msg}");
    }

    /// The spike reflex is off by default and its keys are checked by name.
    #[test]
    fn the_spike_reflex_is_off_by_default_and_bounded() {
        assert_eq!(Config::defaults().control.feedback.spike_pulse, 0.0);
        assert_eq!(Config::defaults().control.feedback.spike_pulse_lead_ms, 0.0);
        for (text, key) in [
            (
                "spike_pulse = \"-11 uA/cm2\"",
                "control.feedback.spike_pulse",
            ),
            (
                "spike_pulse_width = \"0 ms\"",
                "control.feedback.spike_pulse_width",
            ),
            (
                "spike_pulse_delay = \"-1 ms\"",
                "control.feedback.spike_pulse_delay",
            ),
            (
                "spike_pulse_lead = \"-1 ms\"",
                "control.feedback.spike_pulse_lead",
            ),
        ] {
            let e = invalid(&format!("[control.feedback]\n{text}\n"));
            assert_eq!(e.key(), Some(key), "{e}");
        }
        // Within the limiter's bound but beyond MPC's own (6 by default):
        // the loop would clip it, so it is refused by name.
        let e = invalid("[control.feedback]\nspike_pulse = \"-8 uA/cm2\"\n");
        assert_eq!(e.key(), Some("control.feedback.spike_pulse"), "{e}");
        assert!(e.to_string().contains("mpc.max_amplitude"), "{e}");
        Config::from_str_named(
            "t.toml",
            "[mpc]\nmax_amplitude = \"8 uA/cm2\"\n[control.feedback]\nspike_pulse = \"-8 uA/cm2\"\n",
        )
        .unwrap();
        let c = Config::from_str_named(
            "t.toml",
            "[control.feedback]\nspike_pulse = \"-6 uA/cm2\"\nspike_pulse_width = \"2 ms\"\n",
        )
        .unwrap();
        let f = c.control.feedback;
        assert_eq!(
            (
                f.spike_pulse,
                f.spike_pulse_delay_ms,
                f.spike_pulse_width_ms
            ),
            (-6.0, 0.5, 2.0)
        );
    }

    /// The guard judges the plans' forecasts by default; the forecasts of
    /// what was applied are scored whole, so cutting them at the loop's own
    /// currents is refused by name, and an unknown choice too.
    #[test]
    fn the_guard_judges_the_planned_forecasts_by_default() {
        use crate::policy::mpc::GuardForecasts;
        assert_eq!(
            Config::defaults().control.guard.forecasts,
            GuardForecasts::Planned
        );
        let c =
            Config::from_str_named("t.toml", "[control.guard]\nforecasts = \"applied\"\n").unwrap();
        assert_eq!(c.control.guard.forecasts, GuardForecasts::Applied);
        let e = invalid("[control.guard]\nforecasts = \"applied\"\nscore_off_plan = false\n");
        assert_eq!(e.key(), Some("control.guard.score_off_plan"), "{e}");
        let e = invalid("[control.guard]\nforecasts = \"hindsight\"\n");
        assert!(e.to_string().contains("forecasts"), "{e}");
    }

    /// The plan filter is off by default (plans pass as they came) and a
    /// negative time constant is refused by name.
    #[test]
    fn the_plan_filter_is_off_by_default_and_checked() {
        assert_eq!(Config::defaults().control.feedback.plan_filter_ms, 0.0);
        let e = invalid("[control.feedback]\nplan_filter = \"-1 ms\"\n");
        assert_eq!(e.key(), Some("control.feedback.plan_filter"), "{e}");
        let c = Config::from_str_named("t.toml", "[control.feedback]\nplan_filter = \"30 ms\"\n")
            .unwrap();
        assert_eq!(c.control.feedback.plan_filter_ms, 30.0);
    }

    /// MPC's silence aim is the ceiling itself by default and refused
    /// by name beyond ±10 mV.
    #[test]
    fn the_mpc_silence_margin_defaults_to_zero_and_is_checked() {
        assert_eq!(Config::defaults().control.mpc.silence_margin_mv, 0.0);
        let e = invalid("[mpc]\nsilence_margin = \"12 mV\"\n");
        assert_eq!(e.key(), Some("mpc.silence_margin"), "{e}");
        let c = Config::from_str_named("t.toml", "[mpc]\nsilence_margin = \"-0.35 mV\"\n").unwrap();
        assert_eq!(c.control.mpc.silence_margin_mv, -0.35);
    }

    /// The burst cost's credit for isolated spikes is off by default and
    /// refused by name outside 0 ..= 10 (NaN included).
    #[test]
    fn the_burst_single_credit_is_off_by_default_and_checked() {
        assert_eq!(Config::defaults().control.mpc.burst_single_credit, 0.0);
        for bad in ["10.5", "-0.1", "nan"] {
            let e = invalid(&format!("[mpc]\nburst_single_credit = {bad}\n"));
            assert_eq!(e.key(), Some("mpc.burst_single_credit"), "{e}");
        }
        let c = Config::from_str_named("t.toml", "[mpc]\nburst_single_credit = 0.25\n").unwrap();
        assert_eq!(c.control.mpc.burst_single_credit, 0.25);
    }

    /// The planner's state filter is off by default and a negative time
    /// constant is refused by name.
    #[test]
    fn the_window_filter_is_off_by_default_and_checked() {
        assert_eq!(Config::defaults().control.mpc.window_filter_ms, 0.0);
        let e = invalid("[mpc]\nwindow_filter = \"-1 ms\"\n");
        assert_eq!(e.key(), Some("mpc.window_filter"), "{e}");
    }

    #[test]
    fn negative_conductance_is_refused() {
        let e = invalid("[plant.sim.overrides]\ng_m = -0.5\n");
        assert_eq!(e.key(), Some("plant.sim.overrides.g_m"));
        assert!(e.to_string().starts_with("test.toml:2:"), "{e}");
    }

    #[test]
    fn dt_larger_than_sample_period_is_refused() {
        let e = invalid("[plant.sim]\nintegrator = \"rk4\"\ndt = \"0.2 ms\"\n");
        assert_eq!(e.key(), Some("plant.sim.dt"));
        assert!(
            e.to_string()
                .contains("larger than plant.sim.sample_period"),
            "{e}"
        );
    }

    #[test]
    fn schedule_resolves_presets_and_overrides_in_order() {
        let c = Config::from_str_named(
            "t.toml",
            "[[plant.sim.schedule]]\nat = \"30 s\"\npreset = \"bursting\"\n\
             [[plant.sim.schedule]]\nat = \"40 s\"\n[plant.sim.schedule.overrides]\ng_m = 0.5\n",
        )
        .unwrap();
        let s = &c.sim.schedule;
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].at_ms, 30_000.0);
        assert_eq!(s[0].params.g_nap, 0.41);
        assert_eq!((s[1].params.g_nap, s[1].params.g_m), (0.41, 0.5));
        assert_eq!(s[1].label, "g_m");
        let e = invalid("[[plant.sim.schedule]]\nat = \"3 s\"\npreset = \"nope\"\n");
        assert_eq!(e.key(), Some("plant.sim.schedule[0].preset"));
        assert!(
            e.to_string().contains("defined presets: bursting, regular"),
            "{e}"
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = invalid("[plant\n");
        assert!(e.to_string().starts_with("test.toml:1:"), "{e}");
    }

    #[test]
    fn command_line_layer_is_validated_and_named() {
        let mut cli = toml::Table::new();
        let mut o = toml::Table::new();
        o.insert("g_m".into(), toml::Value::Float(-1.0));
        let mut sim = toml::Table::new();
        sim.insert("overrides".into(), toml::Value::Table(o));
        let mut plant = toml::Table::new();
        plant.insert("sim".into(), toml::Value::Table(sim));
        cli.insert("plant".into(), toml::Value::Table(plant));
        let e = Config::load_layered(None, &cli).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("command line: plant.sim.overrides.g_m:"),
            "{e}"
        );
    }

    #[test]
    fn safety_limits_above_the_hard_ceilings_are_refused_with_their_key() {
        let e = invalid("[safety]\nmax_amplitude = \"50 uA/cm2\"\n");
        assert_eq!(e.key(), Some("safety.max_amplitude"));
        assert_eq!(
            e.to_string(),
            "test.toml:2: safety.max_amplitude: 50 exceeds the hard ceiling 20 compiled into this binary"
        );
        let e = invalid("[safety]\nmax_slew = -1\n");
        assert_eq!(e.key(), Some("safety.max_slew"));
        let c = Config::defaults();
        assert!(c.safety.validate().is_ok());
    }

    #[test]
    fn service_keys_are_validated() {
        let c = Config::defaults();
        assert_eq!(c.service.socket, SocketChoice::Auto);
        assert_eq!(c.service.socket_mode, 0o660);
        assert_eq!(c.service.metrics, Some("127.0.0.1:9187".parse().unwrap()));
        assert!(c.service.start_armed);
        let e = invalid("[service]\nmetrics = \"0.0.0.0:9187\"\n");
        assert_eq!(e.key(), Some("service.metrics"));
        assert!(e.to_string().starts_with("test.toml:2:"), "{e}");
        assert!(e.to_string().contains("metrics_public"), "{e}");
        let c = Config::from_str_named(
            "t.toml",
            "[service]\nmetrics = \"0.0.0.0:9187\"\nmetrics_public = true\nsocket = \"\"\n",
        )
        .unwrap();
        assert_eq!(c.service.socket, SocketChoice::Off);
        let e = invalid("[service]\nsocket_mode = \"0666\"\n");
        assert_eq!(e.key(), Some("service.socket_mode"));
        assert!(e.to_string().contains("world-write"), "{e}");
        let e = invalid("[service]\nsocket_mode = \"rw\"\n");
        assert_eq!(e.key(), Some("service.socket_mode"));
        let e = invalid("[service]\nmetrics = \"localhost\"\n");
        assert_eq!(e.key(), Some("service.metrics"));
        let e = invalid("[service]\nlisten = 1\n");
        assert_eq!(e.key(), Some("service.listen"));
    }

    #[test]
    fn the_shipped_service_config_is_valid() {
        let text = include_str!("../../systemd/neurostimd.toml");
        let c = Config::from_str_named("systemd/neurostimd.toml", text).unwrap();
        assert_eq!(c.plant_kind, PlantKind::Serial);
        assert!(!c.service.start_armed);
        assert_eq!(c.service.socket, SocketChoice::Auto);
    }

    #[test]
    fn users_may_add_presets() {
        let c = Config::from_str_named(
            "t.toml",
            "[presets.quiet]\ni_app = 0.2\n[plant.sim]\npreset = \"quiet\"\n",
        )
        .unwrap();
        assert_eq!(c.sim.params.i_app, 0.2);
        assert_eq!(c.sim.params.g_nap, 0.2);
    }
}

//! Configuration: raw TOML → validated, typed [`Config`].
//!
//! The documented file `config/neurostimd.toml` is compiled in as the
//! defaults (it also holds the neuron presets, so presets are data, not code
//! paths). A user file is laid over it key by key. Deserialisation checks
//! only shapes and units (`Raw*` types, unknown keys refused); validation then
//! enforces ranges and cross-field rules and derives what the daemon uses.
//! Every error names the file, the line where it can be found and the key.

use crate::neuron::integrate::Method;
use crate::neuron::Params;
use crate::units::{Conductance, Current, Quantity, Time, Voltage};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The documented defaults, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../config/neurostimd.toml");
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
    g_l: Quantity<Conductance> => non_negative,
    e_l: Quantity<Voltage> => finite,
    g_na: Quantity<Conductance> => non_negative,
    e_na: Quantity<Voltage> => finite,
    g_nap: Quantity<Conductance> => non_negative,
    theta_p: Quantity<Voltage> => finite,
    g_kdr: Quantity<Conductance> => non_negative,
    e_k: Quantity<Voltage> => finite,
    g_a: Quantity<Conductance> => non_negative,
    g_m: Quantity<Conductance> => non_negative,
    g_ca: Quantity<Conductance> => non_negative,
    e_ca: Quantity<Voltage> => finite,
    g_kca: Quantity<Conductance> => non_negative,
    a_c: f64 => positive,
    g_kahp: Quantity<Conductance> => non_negative,
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
struct RawRecord {
    dir: std::path::PathBuf,
    flush_interval: Quantity<Time>,
    fsync: bool,
    v_range: Quantity<Voltage>,
    i_range: Quantity<Current>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetrain {
    enabled: bool,
    state_dir: std::path::PathBuf,
    on_drift: bool,
    drift_reference: String,
    drift_multiple: f64,
    drift_window: Quantity<Time>,
    periodic: Quantity<Time>,
    data: Quantity<Time>,
    buffer: Quantity<Time>,
    validation: f64,
    holdout: f64,
    margin: f64,
    epochs: usize,
    learning_rate: f64,
    batch: usize,
    stride: usize,
    patience: usize,
    seed: u64,
    cooldown: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    socket: String,
    socket_mode: String,
    metrics: String,
    metrics_public: bool,
    start_armed: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    policy: crate::policy::PolicyKind,
    objective: crate::policy::ObjectiveKind,
    model: String,
    period: Quantity<Time>,
    compute_delay: Quantity<Time>,
    realtime: RawRealtime,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCpu {
    Index(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealtime {
    mlockall: bool,
    priority: i64,
    cpu: RawCpu,
    prefault_kib: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObjective {
    settle: Quantity<Time>,
    rate: RawRate,
    burst: RawBurst,
    voltage: RawWave<Voltage>,
    silence: RawSilence,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateStep {
    at: Quantity<Time>,
    rate: Quantity<crate::units::Frequency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    schedule: Vec<RawRateStep>,
    bin: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBurst {
    max_isi: Quantity<Time>,
    min_rate: Quantity<crate::units::Frequency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSilence {
    ceiling: Quantity<Voltage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(bound = "")]
struct RawWave<D: crate::units::Dimension> {
    shape: crate::policy::Shape,
    offset: Quantity<D>,
    amplitude: Quantity<D>,
    period: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMpc {
    candidates: usize,
    max_amplitude: Quantity<Current>,
    iterations: usize,
    elites: usize,
    charge_weight: f64,
    smoothness: f64,
    time_budget: Quantity<Time>,
    spike_threshold: Quantity<Voltage>,
    spread: f64,
    bias_gain: f64,
    seed: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPid {
    rate_kp: f64,
    rate_ki: f64,
    rate_tau: Quantity<Time>,
    burst_target: Quantity<crate::units::Frequency>,
    voltage_kp: f64,
    voltage_ki: f64,
    voltage_kd: f64,
    silence_margin: Quantity<Voltage>,
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
struct RawTrain {
    layers: usize,
    hidden: usize,
    t_in: usize,
    t_out: usize,
    dt: Quantity<Time>,
    order: crate::forecast::OutputOrder,
    #[serde(default)]
    head: crate::train::net::Head,
    epochs: usize,
    batch: usize,
    learning_rate: f64,
    clip_norm: f64,
    patience: usize,
    seed: u64,
    data: RawTrainData,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrainData {
    presets: Vec<String>,
    #[serde(default)]
    traces: Vec<std::path::PathBuf>,
    regime_change: bool,
    duration: Quantity<Time>,
    stride: usize,
    max_amplitude: Quantity<Current>,
    train_fraction: f64,
    val_fraction: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlant {
    kind: PlantKind,
    sim: RawSim,
    serial: RawSerial,
    replay: RawReplay,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplay {
    recording: std::path::PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSerial {
    port: std::path::PathBuf,
    baud: u32,
    timeout: Quantity<Time>,
    valid_for: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSim {
    preset: String,
    sample_period: Quantity<Time>,
    integrator: IntegratorKind,
    dt: Quantity<Time>,
    tolerance: f64,
    noise_sd: Quantity<Voltage>,
    seed: u64,
    #[serde(default)]
    overrides: RawParams,
    #[serde(default)]
    schedule: Vec<RawChange>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChange {
    at: Quantity<Time>,
    preset: Option<String>,
    #[serde(default)]
    overrides: RawParams,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    duration: Quantity<Time>,
    clock: Clock,
    reports: std::path::PathBuf,
}

// ----------------------------------------------------------- validated layer

/// A parameter change at a point in simulated time.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ScheduledChange {
    pub at_ms: f64,
    /// What changed, for logs and recordings (e.g. `preset bursting`).
    pub label: String,
    pub params: Params,
}

/// The embedded simulator plant, validated.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SimConfig {
    pub preset: String,
    pub params: Params,
    pub sample_period_ms: f64,
    pub method: Method,
    pub noise_sd_mv: f64,
    pub seed: u64,
    pub schedule: Vec<ScheduledChange>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RunConfig {
    /// None: run until stopped.
    pub duration_s: Option<f64>,
    pub clock: Clock,
    /// Parent directory of per-run reports; `None`: no report by default.
    pub reports: Option<std::path::PathBuf>,
}

/// One stretch of training data: a label and the simulator that makes it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainSource {
    pub label: String,
    pub sim: SimConfig,
}

/// What `neurostimd train` builds and how (validated `[train]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TrainConfig {
    pub layers: usize,
    pub hidden: usize,
    pub t_in: usize,
    pub t_out: usize,
    pub dt_ms: f64,
    /// Samples per model step.
    pub decimation: usize,
    pub order: crate::forecast::OutputOrder,
    /// Output head: one linear unit (default, the paper's) or a 2-layer MLP.
    pub head: crate::train::net::Head,
    pub schedule: crate::train::trainer::Schedule,
    pub sources: Vec<TrainSource>,
    /// Recorded or simulated traces (CSV, as `simulate --trace-out` writes)
    /// used as further sources.
    pub traces: Vec<std::path::PathBuf>,
    pub duration_ms: f64,
    pub stride: usize,
    pub max_amplitude: f64,
    pub train_fraction: f64,
    pub val_fraction: f64,
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

    fn validate(raw: RawConfig, sources: &Sources) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| ConfigError::Invalid {
            location: sources.locate(&parse_key_path(key)),
            key: key.to_string(),
            message,
        };
        let check = |r: &RawParams, at: &str| r.check(at).map_err(|(k, m)| err(&k, m));

        let mut presets = BTreeMap::new();
        for (name, rp) in &raw.presets {
            check(rp, &format!("presets.{name}"))?;
            let mut p = Params::default();
            rp.apply(&mut p);
            presets.insert(name.clone(), p);
        }
        let preset = |name: &str, key: &str| {
            presets.get(name).copied().ok_or_else(|| {
                let known: Vec<&str> = presets.keys().map(String::as_str).collect();
                err(
                    key,
                    format!(
                        "no preset named `{name}`; defined presets: {}",
                        known.join(", ")
                    ),
                )
            })
        };

        let s = &raw.plant.sim;
        let mut params = preset(&s.preset, "plant.sim.preset")?;
        check(&s.overrides, "plant.sim.overrides")?;
        s.overrides.apply(&mut params);

        let sp = s.sample_period.get();
        positive(sp).map_err(|m| err("plant.sim.sample_period", m))?;
        if sp < MIN_SAMPLE_PERIOD_MS {
            return Err(err(
                "plant.sim.sample_period",
                format!("{sp} ms is shorter than {MIN_SAMPLE_PERIOD_MS} ms (1 MHz)"),
            ));
        }
        if sp > 10.0 {
            return Err(err(
                "plant.sim.sample_period",
                format!("{sp} ms is longer than 10 ms; the loop needs at least 100 Hz"),
            ));
        }
        let method = match s.integrator {
            IntegratorKind::Rk4 => {
                let dt = s.dt.get();
                positive(dt).map_err(|m| err("plant.sim.dt", m))?;
                if dt > sp {
                    return Err(err(
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
                    return Err(err(
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
        non_negative(s.noise_sd.get()).map_err(|m| err("plant.sim.noise_sd", m))?;

        let mut schedule = Vec::with_capacity(s.schedule.len());
        let mut current = params;
        let mut last_at = -1.0;
        for (i, c) in s.schedule.iter().enumerate() {
            let at_key = format!("plant.sim.schedule[{i}].at");
            let at = c.at.get();
            non_negative(at).map_err(|m| err(&at_key, m))?;
            if at <= last_at {
                return Err(err(
                    &at_key,
                    format!("{at} ms is not after the previous change ({last_at} ms); list changes in time order"),
                ));
            }
            last_at = at;
            let mut label = Vec::new();
            if let Some(name) = &c.preset {
                current = preset(name, &format!("plant.sim.schedule[{i}].preset"))?;
                label.push(format!("preset {name}"));
            }
            check(&c.overrides, &format!("plant.sim.schedule[{i}].overrides"))?;
            c.overrides.apply(&mut current);
            label.extend(c.overrides.set_keys().iter().map(|k| k.to_string()));
            if label.is_empty() {
                return Err(err(
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

        let d = raw.run.duration.get();
        non_negative(d).map_err(|m| err("run.duration", m))?;
        if d / 1000.0 > MAX_DURATION_S {
            return Err(err(
                "run.duration",
                format!(
                    "{} s is longer than {MAX_DURATION_S} s (100 days)",
                    d / 1000.0
                ),
            ));
        }

        let sf = &raw.safety;
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
            err(&format!("safety.{name}"), message)
        })?;

        let t = &raw.train;
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(err(key, format!("{v} is outside {lo} ..= {hi}")))
            }
        };
        range("train.layers", t.layers, 1, 4)?;
        range("train.hidden", t.hidden, 1, 1024)?;
        range("train.t_in", t.t_in, 1, 10_000)?;
        range("train.t_out", t.t_out, 1, 1_000)?;
        range("train.epochs", t.epochs, 1, 100_000)?;
        range("train.batch", t.batch, 1, 65_536)?;
        range("train.patience", t.patience, 1, 100_000)?;
        range("train.data.stride", t.data.stride, 1, 100_000)?;
        let decimation =
            crate::forecast::WindowRing::decimation_for(t.dt.get(), sp).ok_or_else(|| {
                err(
                    "train.dt",
                    format!(
                        "{} ms is not a whole number of sample periods ({sp} ms)",
                        t.dt.get()
                    ),
                )
            })?;
        if !(t.learning_rate > 0.0 && t.learning_rate < 1.0) {
            return Err(err(
                "train.learning_rate",
                format!("{} is outside (0, 1)", t.learning_rate),
            ));
        }
        non_negative(t.clip_norm).map_err(|m| err("train.clip_norm", m))?;
        positive(t.data.duration.get()).map_err(|m| err("train.data.duration", m))?;
        positive(t.data.max_amplitude.get()).map_err(|m| err("train.data.max_amplitude", m))?;
        let tf = t.data.train_fraction;
        let vf = t.data.val_fraction;
        if !(tf > 0.0 && vf > 0.0 && tf + vf < 1.0) {
            return Err(err(
                "train.data.train_fraction",
                format!("train_fraction {tf} and val_fraction {vf} must be > 0 and sum to < 1 (the rest is the test set)"),
            ));
        }
        let sim = SimConfig {
            preset: s.preset.clone(),
            params,
            sample_period_ms: sp,
            method,
            noise_sd_mv: s.noise_sd.get(),
            seed: s.seed,
            schedule,
        };
        // Training stretches use the plant's settings without its schedule.
        let base = SimConfig {
            schedule: Vec::new(),
            ..sim.clone()
        };
        let mut sources = Vec::new();
        for (k, name) in t.data.presets.iter().enumerate() {
            let p = preset(name, &format!("train.data.presets[{k}]"))?;
            sources.push(TrainSource {
                label: name.clone(),
                sim: SimConfig {
                    preset: name.clone(),
                    params: p,
                    ..base.clone()
                },
            });
        }
        if t.data.regime_change {
            let regular = preset("regular", "train.data.regime_change")?;
            let bursting = preset("bursting", "train.data.regime_change")?;
            sources.push(TrainSource {
                label: "regular->bursting".into(),
                sim: SimConfig {
                    preset: "regular".into(),
                    params: regular,
                    schedule: vec![ScheduledChange {
                        at_ms: t.data.duration.get() / 2.0,
                        label: "preset bursting".into(),
                        params: bursting,
                    }],
                    ..base.clone()
                },
            });
        }
        if sources.is_empty() && t.data.traces.is_empty() {
            return Err(err(
                "train.data.presets",
                "no data: list presets, set regime_change or give traces".into(),
            ));
        }
        let train = TrainConfig {
            layers: t.layers,
            hidden: t.hidden,
            t_in: t.t_in,
            t_out: t.t_out,
            dt_ms: t.dt.get(),
            decimation,
            order: t.order,
            head: t.head,
            schedule: crate::train::trainer::Schedule {
                epochs: t.epochs,
                batch: t.batch,
                learning_rate: t.learning_rate,
                clip_norm: t.clip_norm,
                patience: t.patience,
                seed: t.seed,
            },
            sources,
            traces: t.data.traces.clone(),
            duration_ms: t.data.duration.get(),
            stride: t.data.stride,
            max_amplitude: t.data.max_amplitude.get(),
            train_fraction: tf,
            val_fraction: vf,
        };

        let control = Self::validate_control(&raw, sp, &safety, &err)?;
        let se = &raw.plant.serial;
        positive(se.timeout.get()).map_err(|m| err("plant.serial.timeout", m))?;
        positive(se.valid_for.get()).map_err(|m| err("plant.serial.valid_for", m))?;
        if se.valid_for.get() > 1000.0 {
            return Err(err(
                "plant.serial.valid_for",
                format!("{} ms is longer than 1 s; a silent daemon must not leave current flowing that long", se.valid_for.get()),
            ));
        }
        let serial = crate::plant::serial::SerialConfig {
            port: se.port.clone(),
            baud: se.baud,
            timeout_ms: se.timeout.get(),
            valid_for_us: (se.valid_for.get() * 1000.0).round() as u32,
            sample_period_ms: sp,
        };
        let r = &raw.record;
        positive(r.flush_interval.get()).map_err(|m| err("record.flush_interval", m))?;
        if r.flush_interval.get() > 60_000.0 {
            return Err(err(
                "record.flush_interval",
                format!(
                    "{} ms: a crash would lose more than a minute of data; at most 60 s",
                    r.flush_interval.get()
                ),
            ));
        }
        positive(r.v_range.get()).map_err(|m| err("record.v_range", m))?;
        positive(r.i_range.get()).map_err(|m| err("record.i_range", m))?;
        if r.i_range.get() < safety.max_amplitude {
            return Err(err(
                "record.i_range",
                format!(
                    "{} uA/cm2 is below safety.max_amplitude ({} uA/cm2): commands would be clipped in the recording",
                    r.i_range.get(),
                    safety.max_amplitude
                ),
            ));
        }
        let record = RecordConfig {
            dir: (!r.dir.as_os_str().is_empty()).then(|| r.dir.clone()),
            flush_interval_ms: r.flush_interval.get(),
            fsync: r.fsync,
            v_range_mv: r.v_range.get(),
            i_range: r.i_range.get(),
        };
        let rt = &raw.retrain;
        if !(rt.drift_multiple.is_finite() && rt.drift_multiple > 1.0) {
            return Err(err(
                "retrain.drift_multiple",
                format!("{} must be a number > 1", rt.drift_multiple),
            ));
        }
        for (key, q) in [
            ("retrain.drift_window", rt.drift_window.get()),
            ("retrain.data", rt.data.get()),
            ("retrain.buffer", rt.buffer.get()),
        ] {
            positive(q).map_err(|m| err(key, m))?;
        }
        non_negative(rt.periodic.get()).map_err(|m| err("retrain.periodic", m))?;
        non_negative(rt.cooldown.get()).map_err(|m| err("retrain.cooldown", m))?;
        if rt.buffer.get() < rt.data.get() {
            return Err(err(
                "retrain.buffer",
                format!(
                    "{} ms keeps less than retrain.data ({} ms)",
                    rt.buffer.get(),
                    rt.data.get()
                ),
            ));
        }
        for (key, x) in [
            ("retrain.validation", rt.validation),
            ("retrain.holdout", rt.holdout),
        ] {
            if !(0.05..=0.5).contains(&x) {
                return Err(err(key, format!("{x} is outside 0.05 ..= 0.5")));
            }
        }
        if !(0.0..0.9).contains(&rt.margin) {
            return Err(err(
                "retrain.margin",
                format!("{} is outside 0 ..< 0.9", rt.margin),
            ));
        }
        if rt.epochs == 0 || rt.batch == 0 || rt.stride == 0 || rt.patience == 0 {
            return Err(err(
                "retrain",
                "epochs, batch, stride and patience must be >= 1".into(),
            ));
        }
        positive(rt.learning_rate).map_err(|m| err("retrain.learning_rate", m))?;
        let drift_reference_online = match rt.drift_reference.as_str() {
            "online" => true,
            "card" => false,
            other => {
                return Err(err(
                    "retrain.drift_reference",
                    format!("`{other}` is not one of: online, card"),
                ))
            }
        };
        let retrain = RetrainConfig {
            enabled: rt.enabled,
            drift_reference_online,
            state_dir: rt.state_dir.clone(),
            on_drift: rt.on_drift,
            drift_multiple: rt.drift_multiple,
            drift_window_ms: rt.drift_window.get(),
            periodic_ms: (rt.periodic.get() > 0.0).then(|| rt.periodic.get()),
            data_ms: rt.data.get(),
            buffer_ms: rt.buffer.get(),
            validation: rt.validation,
            holdout: rt.holdout,
            margin: rt.margin,
            schedule: crate::train::trainer::Schedule {
                epochs: rt.epochs,
                batch: rt.batch,
                learning_rate: rt.learning_rate,
                clip_norm: 1.0,
                patience: rt.patience,
                seed: rt.seed,
            },
            stride: rt.stride,
            cooldown_ms: rt.cooldown.get(),
        };
        if raw.plant.kind == PlantKind::Replay && raw.plant.replay.recording.as_os_str().is_empty()
        {
            return Err(err(
                "plant.replay.recording",
                "plant.kind = \"replay\" needs a recording directory (--recording DIR)".into(),
            ));
        }
        let service = Self::validate_service(&raw.service, &err)?;
        Ok(Config {
            service,
            plant_kind: raw.plant.kind,
            record,
            retrain,
            replay: raw.plant.replay.recording.clone(),
            serial,
            control,
            sim,
            run: RunConfig {
                duration_s: if d > 0.0 { Some(d / 1000.0) } else { None },
                clock: raw.run.clock,
                reports: (!raw.run.reports.as_os_str().is_empty()).then(|| raw.run.reports.clone()),
            },
            safety,
            train,
            presets,
        })
    }

    fn validate_control(
        raw: &RawConfig,
        sample_period_ms: f64,
        safety: &crate::safety::Limits,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<ControlConfig, ConfigError> {
        use crate::policy::{Objective, RateSchedule, Waveform};
        let c = &raw.control;
        let period = c.period.get();
        positive(period).map_err(|m| err("control.period", m))?;
        if (period / sample_period_ms - (period / sample_period_ms).round()).abs() > 1e-6 {
            return Err(err(
                "control.period",
                format!(
                    "{period} ms is not a whole number of sample periods ({sample_period_ms} ms)"
                ),
            ));
        }
        let delay = c.compute_delay.get();
        non_negative(delay).map_err(|m| err("control.compute_delay", m))?;
        // A plan applied this late is stale whatever the model; the bound
        // also keeps the free clock's in-flight plan pool small.
        if delay > MAX_COMPUTE_DELAY_MS {
            return Err(err(
                "control.compute_delay",
                format!("{delay} ms is longer than {MAX_COMPUTE_DELAY_MS} ms; a plan would take effect after it had ended"),
            ));
        }
        let rt = &c.realtime;
        if !(0..=99).contains(&rt.priority) {
            return Err(err(
                "control.realtime.priority",
                format!(
                    "{} is outside 0 ..= 99 (0: do not ask for SCHED_FIFO)",
                    rt.priority
                ),
            ));
        }
        let cpu = match &rt.cpu {
            RawCpu::Index(i) if *i >= 0 => CpuChoice::Index(*i as usize),
            RawCpu::Name(n) if n == "last" => CpuChoice::Last,
            RawCpu::Name(n) if n == "none" => CpuChoice::None,
            RawCpu::Index(i) => {
                return Err(err(
                    "control.realtime.cpu",
                    format!("{i} is negative; give a CPU index, \"last\" or \"none\""),
                ))
            }
            RawCpu::Name(n) => {
                return Err(err(
                    "control.realtime.cpu",
                    format!("`{n}` is not a CPU index, \"last\" or \"none\""),
                ))
            }
        };
        let o = &raw.objective;
        non_negative(o.settle.get()).map_err(|m| err("objective.settle", m))?;
        let steps: Vec<(f64, f64)> = o
            .rate
            .schedule
            .iter()
            .map(|s| (s.at.get(), s.rate.get()))
            .collect();
        let rate = RateSchedule::new(&steps).map_err(|m| err("objective.rate.schedule", m))?;
        positive(o.rate.bin.get()).map_err(|m| err("objective.rate.bin", m))?;
        positive(o.burst.max_isi.get()).map_err(|m| err("objective.burst.max_isi", m))?;
        positive(o.burst.min_rate.get()).map_err(|m| err("objective.burst.min_rate", m))?;
        finite(o.silence.ceiling.get()).map_err(|m| err("objective.silence.ceiling", m))?;
        let wave = |w: &RawWave<_>, at: &str| -> Result<Waveform, ConfigError> {
            positive(w.period.get()).map_err(|m| err(&format!("{at}.period"), m))?;
            finite(w.offset.get()).map_err(|m| err(&format!("{at}.offset"), m))?;
            finite(w.amplitude.get()).map_err(|m| err(&format!("{at}.amplitude"), m))?;
            Ok(Waveform {
                shape: w.shape,
                offset: w.offset.get(),
                amplitude: w.amplitude.get(),
                period_ms: w.period.get(),
            })
        };
        let reference = {
            let w = &o.voltage;
            positive(w.period.get()).map_err(|m| err("objective.voltage.period", m))?;
            Waveform {
                shape: w.shape,
                offset: w.offset.get(),
                amplitude: w.amplitude.get(),
                period_ms: w.period.get(),
            }
        };
        let open = wave(&raw.open, "open")?;
        if open.offset.abs() + open.amplitude.abs() > safety.max_amplitude {
            return Err(err(
                "open.amplitude",
                format!(
                    "|offset| + |amplitude| = {} uA/cm2 exceeds safety.max_amplitude ({}); the limiter would clip the waveform",
                    open.offset.abs() + open.amplitude.abs(),
                    safety.max_amplitude
                ),
            ));
        }
        let objective = Objective {
            kind: c.objective,
            settle_ms: o.settle.get(),
            reference,
            rate,
            rate_bin_ms: o.rate.bin.get(),
            max_isi_ms: o.burst.max_isi.get(),
            min_rate_hz: o.burst.min_rate.get(),
            ceiling_mv: o.silence.ceiling.get(),
        };
        let m = &raw.mpc;
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(err(key, format!("{v} is outside {lo} ..= {hi}")))
            }
        };
        range("mpc.candidates", m.candidates, 2, 256)?;
        positive(m.max_amplitude.get()).map_err(|e| err("mpc.max_amplitude", e))?;
        range("mpc.iterations", m.iterations, 1, 100)?;
        range("mpc.elites", m.elites, 1, m.candidates)?;
        non_negative(m.charge_weight).map_err(|e| err("mpc.charge_weight", e))?;
        non_negative(m.smoothness).map_err(|e| err("mpc.smoothness", e))?;
        positive(m.time_budget.get()).map_err(|e| err("mpc.time_budget", e))?;
        finite(m.spike_threshold.get()).map_err(|e| err("mpc.spike_threshold", e))?;
        if !(m.spread > 0.0 && m.spread <= 2.0) {
            return Err(err("mpc.spread", format!("{} is outside (0, 2]", m.spread)));
        }
        if !(0.0..=1.0).contains(&m.bias_gain) {
            return Err(err(
                "mpc.bias_gain",
                format!("{} is outside 0 ..= 1", m.bias_gain),
            ));
        }
        let p = &raw.pid;
        for (key, v) in [
            ("pid.rate_kp", p.rate_kp),
            ("pid.rate_ki", p.rate_ki),
            ("pid.voltage_kp", p.voltage_kp),
            ("pid.voltage_ki", p.voltage_ki),
            ("pid.voltage_kd", p.voltage_kd),
            ("pid.silence_margin", p.silence_margin.get()),
            ("pid.burst_target", p.burst_target.get()),
        ] {
            non_negative(v).map_err(|e| err(key, e))?;
        }
        positive(p.rate_tau.get()).map_err(|e| err("pid.rate_tau", e))?;
        Ok(ControlConfig {
            policy: c.policy,
            objective,
            model: crate::forecast::ModelSource::parse(&c.model),
            period_ms: period,
            compute_delay_ms: c.compute_delay.get(),
            realtime: RealtimeConfig {
                mlockall: rt.mlockall,
                priority: rt.priority as i32,
                cpu,
                prefault_kib: rt.prefault_kib,
            },
            mpc: crate::policy::mpc::MpcConfig {
                candidates: m.candidates,
                max_amplitude: m.max_amplitude.get(),
                iterations: m.iterations,
                elites: m.elites,
                weights: crate::policy::CostWeights {
                    charge: m.charge_weight,
                    smoothness: m.smoothness,
                },
                time_budget_ms: m.time_budget.get(),
                spike_threshold_mv: m.spike_threshold.get(),
                spread: m.spread,
                bias_gain: m.bias_gain,
                seed: m.seed,
            },
            pid: crate::policy::pid::PidGains {
                rate_kp: p.rate_kp,
                rate_ki: p.rate_ki,
                rate_tau_ms: p.rate_tau.get(),
                voltage_kp: p.voltage_kp,
                voltage_ki: p.voltage_ki,
                voltage_kd: p.voltage_kd,
                silence_margin_mv: p.silence_margin.get(),
                burst_target_hz: p.burst_target.get(),
            },
            open,
        })
    }

    fn validate_service(
        s: &RawService,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<ServiceConfig, ConfigError> {
        let socket = match s.socket.as_str() {
            "auto" => SocketChoice::Auto,
            "" => SocketChoice::Off,
            p => SocketChoice::Path(p.into()),
        };
        if let SocketChoice::Path(p) = &socket {
            // sockaddr_un holds 108 bytes including the terminating NUL.
            if p.as_os_str().len() > 107 {
                return Err(err(
                    "service.socket",
                    format!(
                        "`{}` is longer than the 107 bytes a Unix socket path may have",
                        p.display()
                    ),
                ));
            }
        }
        let mode = u32::from_str_radix(s.socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                err(
                    "service.socket_mode",
                    format!(
                        "`{}` is not an octal file mode such as \"0660\"",
                        s.socket_mode
                    ),
                )
            })?;
        if mode & 0o002 != 0 {
            return Err(err(
                "service.socket_mode",
                format!("{mode:04o} lets every local user steer the stimulation; drop the world-write bit (e.g. \"0660\": owner and group)"),
            ));
        }
        if mode & 0o600 != 0o600 {
            return Err(err(
                "service.socket_mode",
                format!("{mode:04o} keeps the daemon's own user out; the owner needs read and write (0600 at least)"),
            ));
        }
        let metrics = match s.metrics.as_str() {
            "" => None,
            a => {
                let addr: std::net::SocketAddr = a.parse().map_err(|_| {
                    err(
                        "service.metrics",
                        format!("`{a}` is not an address:port such as \"127.0.0.1:9187\" (\"\" turns metrics off)"),
                    )
                })?;
                if !addr.ip().is_loopback() && !s.metrics_public {
                    return Err(err(
                        "service.metrics",
                        format!("{addr} is reachable from other machines; metrics stay on loopback unless service.metrics_public = true"),
                    ));
                }
                Some(addr)
            }
        };
        Ok(ServiceConfig {
            socket,
            socket_mode: mode,
            metrics,
            start_armed: s.start_armed,
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
        let text = include_str!("../systemd/neurostimd.toml");
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

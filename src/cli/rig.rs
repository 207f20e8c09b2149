//! `neurostimd rig`: a bench rig emulated on a pseudo-terminal, with
//! injectable link faults, so the serial plant and its fault handling can
//! be exercised without hardware.

use super::{stop_on_signal, UsageError};
use clap::Args;
use neurostimd::config::{overlay_at as table_at, Config};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct RigArgs {
    /// Configuration laid over the defaults (its [plant.sim] is the cell).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Neuron preset of the emulated cell.
    #[arg(long)]
    preset: Option<String>,
    /// Keep a symlink here to the current pty (it changes on reconnect).
    #[arg(long, value_name = "PATH")]
    link: Option<PathBuf>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECONDS", allow_hyphen_values = true)]
    duration: Option<f64>,
    /// Probability that a sample frame is dropped.
    #[arg(long, default_value_t = 0.0)]
    drop: f64,
    /// Probability that a sample frame has a byte flipped.
    #[arg(long, default_value_t = 0.0)]
    corrupt: f64,
    /// Probability that a sample frame is sent twice.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability that a sample frame swaps with the next.
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Added latency of sample frames, µs.
    #[arg(long, default_value_t = 0)]
    latency_us: u64,
    /// Uniform jitter on top of the latency, µs.
    #[arg(long, default_value_t = 0)]
    jitter_us: u64,
    /// Stop talking at this time (s) for --stall-ms.
    #[arg(long, value_name = "SECONDS")]
    stall_at: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    stall_ms: f64,
    /// Drop the link at this time (s) and come back after --reconnect-ms.
    #[arg(long, value_name = "SECONDS")]
    disconnect_at: Option<f64>,
    #[arg(long, default_value_t = 500.0)]
    reconnect_ms: f64,
    /// Probability per sample of a burst of random bytes.
    #[arg(long, default_value_t = 0.0)]
    garbage: f64,
    /// Protocol version to announce (a wrong one tests refusal).
    #[arg(long, default_value_t = neurostimd::protocol::VERSION)]
    version: u16,
    /// Seed of the fault injection.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Current per count announced and used, uA/cm2 (a coarse one tests
    /// quantisation and the handshake's scale check).
    #[arg(long, default_value_t = 0.001)]
    i_scale: f32,
    /// Gain error of the current output: apply (and report) the command
    /// x (1 + this), from --misapply-at on (the daemon must fault).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    misapply: f64,
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    misapply_at: f64,
    /// Reboot at this time (s): sequence numbers restart from 0, the
    /// command in force is forgotten, streaming goes on without a Hello.
    #[arg(long, value_name = "SECONDS")]
    reboot_at: Option<f64>,
    /// Announce --rate-change-hz in a Hello at this time (s).
    #[arg(long, value_name = "SECONDS", requires = "rate_change_hz")]
    rate_change_at: Option<f64>,
    #[arg(long, value_name = "HZ")]
    rate_change_hz: Option<u32>,
}

pub fn cmd_rig(a: RigArgs) -> anyhow::Result<()> {
    let mut cli = toml::Table::new();
    if let Some(p) = &a.preset {
        table_at(&mut cli, &["plant", "sim"]).insert("preset".into(), p.clone().into());
    }
    let config = Config::load_layered(a.config.as_deref(), &cli)?;
    for (name, p) in [
        ("--drop", a.drop),
        ("--corrupt", a.corrupt),
        ("--duplicate", a.duplicate),
        ("--reorder", a.reorder),
        ("--garbage", a.garbage),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(UsageError(format!("{name} {p} must be a probability in 0..=1")).into());
        }
    }
    for (name, v) in [
        ("--duration", a.duration),
        ("--stall-at", a.stall_at),
        ("--disconnect-at", a.disconnect_at),
        ("--reboot-at", a.reboot_at),
        ("--rate-change-at", a.rate_change_at),
        ("--misapply-at", Some(a.misapply_at)),
        ("--stall-ms", Some(a.stall_ms)),
        ("--reconnect-ms", Some(a.reconnect_ms)),
    ] {
        // The upper bound (about 116 days) keeps a typo such as 1e30 from
        // running a rig for ever.
        if v.is_some_and(|v| !(v.is_finite() && (0.0..=1e7).contains(&v))) {
            return Err(UsageError(format!("{name} {v:?} must be a number in 0 ..= 1e7")).into());
        }
    }
    if !(a.misapply.is_finite() && a.misapply > -1.0) {
        return Err(UsageError(format!(
            "--misapply {} must be a finite gain error > -1",
            a.misapply
        ))
        .into());
    }
    if !(a.i_scale.is_finite() && a.i_scale > 0.0) {
        return Err(UsageError(format!("--i-scale {} must be a number > 0", a.i_scale)).into());
    }
    let mut opts = neurostimd::rig::RigOptions::new(config.sim.clone());
    opts.i_scale = a.i_scale;
    opts.link = a.link.clone();
    opts.duration_s = a.duration;
    opts.version = a.version;
    opts.seed = a.seed;
    opts.faults = neurostimd::rig::Faults {
        drop: a.drop,
        corrupt: a.corrupt,
        duplicate: a.duplicate,
        reorder: a.reorder,
        latency_us: a.latency_us,
        jitter_us: a.jitter_us,
        stall_at_s: a.stall_at,
        stall_ms: a.stall_ms,
        disconnect_at_s: a.disconnect_at,
        reconnect_ms: a.reconnect_ms,
        garbage: a.garbage,
        misapply: a.misapply,
        misapply_at_s: a.misapply_at,
        reboot_at_s: a.reboot_at,
        rate_change_at_s: a.rate_change_at,
        rate_change_hz: a.rate_change_hz.unwrap_or(0),
    };
    let stop = stop_on_signal()?;
    let stats = neurostimd::rig::run(&opts, &stop, |path| {
        println!("{}", path.display());
        eprintln!(
            "rig ready: run `neurostimd --plant serial --port {}` (Ctrl-C stops the rig)",
            path.display()
        );
    })?;
    eprintln!("rig stopped: {}", serde_json::to_string(&stats)?);
    Ok(())
}

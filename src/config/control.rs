//! `[control]`, `[objective]`, `[mpc]`, `[pid]` and `[open]`: the policy and
//! what it pursues; raw and validated.

use super::{finite, non_negative, positive, ConfigError, Cx, RawConfig};
use super::{ControlConfig, CpuChoice, RealtimeConfig, MAX_COMPUTE_DELAY_MS};
use crate::units::{Current, Quantity, Time, Voltage};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub(super) policy: crate::policy::PolicyKind,
    pub(super) objective: crate::policy::ObjectiveKind,
    pub(super) model: String,
    pub(super) period: Quantity<Time>,
    pub(super) compute_delay: Quantity<Time>,
    pub(super) realtime: RawRealtime,
    pub(super) guard: RawGuard,
    pub(super) feedback: RawFeedback,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGuard {
    pub(super) enabled: bool,
    pub(super) fallback: crate::policy::mpc::GuardFallback,
    pub(super) window: Quantity<Time>,
    pub(super) model_ratio: f64,
    pub(super) model_ratio_window: f64,
    pub(super) min_error: Quantity<Voltage>,
    pub(super) objective_margin: f64,
    pub(super) first_window: Quantity<Time>,
    pub(super) probation: Quantity<Time>,
    pub(super) score_off_plan: bool,
    pub(super) forecasts: crate::policy::mpc::GuardForecasts,
    pub(super) reflex_rebounds: u32,
    pub(super) revert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeedback {
    pub(super) gain: f64,
    pub(super) integral_gain: f64,
    pub(super) target: crate::policy::mpc::FeedbackTarget,
    pub(super) max_correction: Quantity<Current>,
    pub(super) max_deviation: Quantity<Voltage>,
    pub(super) ceiling: Quantity<Voltage>,
    pub(super) filter: Quantity<Time>,
    pub(super) plan_filter: Quantity<Time>,
    pub(super) spike_pulse: Quantity<Current>,
    pub(super) spike_pulse_delay: Quantity<Time>,
    pub(super) spike_pulse_width: Quantity<Time>,
    pub(super) spike_pulse_lead: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawCpu {
    Index(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRealtime {
    pub(super) mlockall: bool,
    pub(super) priority: i64,
    pub(super) cpu: RawCpu,
    pub(super) prefault_kib: usize,
    pub(super) cpu_dma_latency_us: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObjective {
    pub(super) settle: Quantity<Time>,
    pub(super) rate: RawRate,
    pub(super) burst: RawBurst,
    pub(super) voltage: RawWave<Voltage>,
    pub(super) silence: RawSilence,
    pub(super) timing: RawTiming,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTiming {
    pub(super) times: Vec<Quantity<Time>>,
    pub(super) window: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateStep {
    pub(super) at: Quantity<Time>,
    pub(super) rate: Quantity<crate::units::Frequency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRate {
    pub(super) schedule: Vec<RawRateStep>,
    pub(super) bin: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBurst {
    pub(super) max_isi: Quantity<Time>,
    pub(super) min_rate: Quantity<crate::units::Frequency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSilence {
    pub(super) ceiling: Quantity<Voltage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(bound = "")]
pub(super) struct RawWave<D: crate::units::Dimension> {
    pub(super) shape: crate::policy::Shape,
    pub(super) offset: Quantity<D>,
    pub(super) amplitude: Quantity<D>,
    pub(super) period: Quantity<Time>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMpc {
    pub(super) candidates: usize,
    pub(super) max_amplitude: Quantity<Current>,
    pub(super) iterations: usize,
    pub(super) elites: usize,
    pub(super) charge_weight: f64,
    pub(super) smoothness: f64,
    pub(super) time_budget: Quantity<Time>,
    pub(super) spike_threshold: Quantity<Voltage>,
    pub(super) model_spike_threshold: bool,
    pub(super) spread: f64,
    pub(super) bias_gain: f64,
    pub(super) seed: u64,
    pub(super) actuation_delay: Quantity<Time>,
    pub(super) plan_reflex: bool,
    pub(super) silence_margin: Quantity<Voltage>,
    pub(super) window_filter: Quantity<Time>,
    pub(super) burst_single_credit: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPid {
    pub(super) rate_kp: f64,
    pub(super) rate_ki: f64,
    pub(super) rate_tau: Quantity<Time>,
    pub(super) burst_target: Quantity<crate::units::Frequency>,
    pub(super) voltage_kp: f64,
    pub(super) voltage_ki: f64,
    pub(super) voltage_kd: f64,
    pub(super) voltage_filter: Quantity<Time>,
    pub(super) silence_margin: Quantity<Voltage>,
    pub(super) rate_ff: Vec<[f64; 2]>,
    pub(super) rate_ff_tau: Quantity<Time>,
    pub(super) pulse_amplitude: Quantity<Current>,
    pub(super) pulse_lead: Quantity<Time>,
    pub(super) pulse_width: Quantity<Time>,
    pub(super) pulse_hold: Quantity<Current>,
    pub(super) burst_pulse: Quantity<Current>,
    pub(super) burst_pulse_delay: Quantity<Time>,
    pub(super) burst_pulse_width: Quantity<Time>,
    pub(super) burst_hold: Quantity<Current>,
}

/// `[control]` and the sections its policy reads.
pub(super) fn validate_control(
    raw: &RawConfig,
    sample_period_ms: f64,
    safety: &crate::safety::Limits,
    cx: &Cx,
) -> Result<ControlConfig, ConfigError> {
    let c = &raw.control;
    let period = c.period.get();
    positive(period).map_err(|m| cx.err("control.period", m))?;
    if (period / sample_period_ms - (period / sample_period_ms).round()).abs() > 1e-6 {
        return Err(cx.err(
            "control.period",
            format!("{period} ms is not a whole number of sample periods ({sample_period_ms} ms)"),
        ));
    }
    let delay = c.compute_delay.get();
    non_negative(delay).map_err(|m| cx.err("control.compute_delay", m))?;
    // A plan applied this late is stale whatever the model; the bound
    // also keeps the free clock's in-flight plan pool small.
    if delay > MAX_COMPUTE_DELAY_MS {
        return Err(cx.err(
                "control.compute_delay",
                format!("{delay} ms is longer than {MAX_COMPUTE_DELAY_MS} ms; a plan would take effect after it had ended"),
            ));
    }
    let (objective, open) = objective(raw, safety, cx)?;
    Ok(ControlConfig {
        policy: c.policy,
        objective,
        model: crate::forecast::ModelSource::parse(&c.model),
        period_ms: period,
        compute_delay_ms: c.compute_delay.get(),
        realtime: realtime(&c.realtime, cx)?,
        mpc: mpc(&raw.mpc, cx)?,
        pid: pid(&raw.pid, cx)?,
        open,
        guard: guard(&c.guard, period, cx)?,
        feedback: feedback(&c.feedback, safety, raw.mpc.max_amplitude.get(), cx)?,
    })
}

/// `[control.guard]`: when MPC hands over to its fallback.
fn guard(
    g: &RawGuard,
    control_period_ms: f64,
    cx: &Cx,
) -> Result<crate::policy::mpc::GuardConfig, ConfigError> {
    let window = g.window.get();
    // A window must hold complete forecasts (horizons of a few control
    // periods) and a meaningful objective figure; 100 ms is the least.
    if !(window >= 100.0 && window >= 10.0 * control_period_ms && window.is_finite()) {
        return Err(cx.err(
            "control.guard.window",
            format!("{window} ms is too short: at least 100 ms and 10 control periods"),
        ));
    }
    for (key, ratio) in [
        ("control.guard.model_ratio", g.model_ratio),
        ("control.guard.model_ratio_window", g.model_ratio_window),
    ] {
        if !(ratio > 0.0 && ratio.is_finite()) {
            return Err(cx.err(
                key,
                format!("{ratio} is not a finite factor > 0 (model RMS error over persistence's)"),
            ));
        }
    }
    let first_window = g.first_window.get();
    if !(first_window >= 100.0 && first_window <= window) {
        return Err(cx.err(
            "control.guard.first_window",
            format!("{first_window} ms: at least 100 ms and at most control.guard.window"),
        ));
    }
    non_negative(g.min_error.get()).map_err(|m| cx.err("control.guard.min_error", m))?;
    if !(g.objective_margin >= 0.0 && g.objective_margin.is_finite()) {
        return Err(cx.err(
            "control.guard.objective_margin",
            format!("{} is not a finite fraction >= 0", g.objective_margin),
        ));
    }
    non_negative(g.probation.get()).map_err(|m| cx.err("control.guard.probation", m))?;
    if g.forecasts == crate::policy::mpc::GuardForecasts::Applied && !g.score_off_plan {
        return Err(cx.err(
            "control.guard.score_off_plan",
            "false only applies to control.guard.forecasts = \"planned\": a forecast of the currents applied is scored on its whole horizon".to_string(),
        ));
    }
    Ok(crate::policy::mpc::GuardConfig {
        enabled: g.enabled,
        probation_ms: g.probation.get(),
        fallback: g.fallback,
        window_ms: window,
        model_ratio: g.model_ratio,
        model_ratio_window: g.model_ratio_window,
        first_window_ms: first_window,
        min_error_mv: g.min_error.get(),
        objective_margin: g.objective_margin,
        score_off_plan: g.score_off_plan,
        forecasts: g.forecasts,
        reflex_rebounds: g.reflex_rebounds,
        revert: g.revert,
    })
}

/// `[control.feedback]`: the per-sample correction around each plan.
fn feedback(
    f: &RawFeedback,
    safety: &crate::safety::Limits,
    mpc_amplitude: f64,
    cx: &Cx,
) -> Result<crate::policy::mpc::FeedbackConfig, ConfigError> {
    non_negative(f.gain).map_err(|m| cx.err("control.feedback.gain", m))?;
    non_negative(f.integral_gain).map_err(|m| cx.err("control.feedback.integral_gain", m))?;
    let max = f.max_correction.get();
    non_negative(max).map_err(|m| cx.err("control.feedback.max_correction", m))?;
    if max > safety.max_amplitude {
        return Err(cx.err(
            "control.feedback.max_correction",
            format!(
                "{max} uA/cm2 exceeds safety.max_amplitude ({})",
                safety.max_amplitude
            ),
        ));
    }
    positive(f.max_deviation.get()).map_err(|m| cx.err("control.feedback.max_deviation", m))?;
    finite(f.ceiling.get()).map_err(|m| cx.err("control.feedback.ceiling", m))?;
    non_negative(f.filter.get()).map_err(|m| cx.err("control.feedback.filter", m))?;
    non_negative(f.plan_filter.get()).map_err(|m| cx.err("control.feedback.plan_filter", m))?;
    let pulse = f.spike_pulse.get();
    finite(pulse).map_err(|m| cx.err("control.feedback.spike_pulse", m))?;
    if pulse.abs() > safety.max_amplitude {
        return Err(cx.err(
            "control.feedback.spike_pulse",
            format!(
                "|{pulse}| uA/cm2 exceeds safety.max_amplitude ({})",
                safety.max_amplitude
            ),
        ));
    }
    // The loop clips the reflex to MPC's own bound: a larger setting would
    // silently act as that bound, so say so instead.
    if pulse.abs() > mpc_amplitude {
        return Err(cx.err(
            "control.feedback.spike_pulse",
            format!(
                "|{pulse}| uA/cm2 exceeds mpc.max_amplitude ({mpc_amplitude}), the largest current MPC applies; the reflex would be clipped to it"
            ),
        ));
    }
    non_negative(f.spike_pulse_delay.get())
        .map_err(|m| cx.err("control.feedback.spike_pulse_delay", m))?;
    positive(f.spike_pulse_width.get())
        .map_err(|m| cx.err("control.feedback.spike_pulse_width", m))?;
    let lead = f.spike_pulse_lead.get();
    if !(0.0..=50.0).contains(&lead) {
        return Err(cx.err(
            "control.feedback.spike_pulse_lead",
            format!("{lead} ms is outside 0 ..= 50 ms"),
        ));
    }
    Ok(crate::policy::mpc::FeedbackConfig {
        gain: f.gain,
        integral_gain: f.integral_gain,
        target: f.target,
        max_correction: max,
        max_deviation_mv: f.max_deviation.get(),
        ceiling_mv: f.ceiling.get(),
        filter_ms: f.filter.get(),
        plan_filter_ms: f.plan_filter.get(),
        spike_pulse: pulse,
        spike_pulse_delay_ms: f.spike_pulse_delay.get(),
        spike_pulse_width_ms: f.spike_pulse_width.get(),
        spike_pulse_lead_ms: lead,
    })
}

/// The kernel's PM QoS "no constraint" CPU latency, µs.
const MAX_CPU_DMA_LATENCY_US: i64 = 2_000_000_000;

/// `[control.realtime]`: what the control thread asks the kernel for.
fn realtime(rt: &RawRealtime, cx: &Cx) -> Result<RealtimeConfig, ConfigError> {
    if !(0..=99).contains(&rt.priority) {
        return Err(cx.err(
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
            return Err(cx.err(
                "control.realtime.cpu",
                format!("{i} is negative; give a CPU index, \"last\" or \"none\""),
            ))
        }
        RawCpu::Name(n) => {
            return Err(cx.err(
                "control.realtime.cpu",
                format!("`{n}` is not a CPU index, \"last\" or \"none\""),
            ))
        }
    };
    // -1: do not ask; otherwise the PM QoS CPU latency in µs, up to the
    // kernel's "no constraint" value (2000 s).
    let cpu_dma_latency_us = match rt.cpu_dma_latency_us {
        -1 => None,
        v if (0..=MAX_CPU_DMA_LATENCY_US).contains(&v) => Some(v as u32),
        v => {
            return Err(cx.err(
                "control.realtime.cpu_dma_latency_us",
                format!(
                    "{v} is outside 0 ..= {MAX_CPU_DMA_LATENCY_US} µs (-1: do not ask for a CPU latency)"
                ),
            ))
        }
    };
    Ok(RealtimeConfig {
        mlockall: rt.mlockall,
        priority: rt.priority as i32,
        cpu,
        prefault_kib: rt.prefault_kib,
        cpu_dma_latency_us,
    })
}

/// `[objective]` and `[open]` (the open-loop waveform must fit the
/// safety limit, or the limiter would clip it).
fn objective(
    raw: &RawConfig,
    safety: &crate::safety::Limits,
    cx: &Cx,
) -> Result<(crate::policy::Objective, crate::policy::Waveform), ConfigError> {
    use crate::policy::{Objective, RateSchedule, Waveform};
    let o = &raw.objective;
    non_negative(o.settle.get()).map_err(|m| cx.err("objective.settle", m))?;
    let steps: Vec<(f64, f64)> = o
        .rate
        .schedule
        .iter()
        .map(|s| (s.at.get(), s.rate.get()))
        .collect();
    let rate = RateSchedule::new(&steps).map_err(|m| cx.err("objective.rate.schedule", m))?;
    positive(o.rate.bin.get()).map_err(|m| cx.err("objective.rate.bin", m))?;
    positive(o.burst.max_isi.get()).map_err(|m| cx.err("objective.burst.max_isi", m))?;
    positive(o.burst.min_rate.get()).map_err(|m| cx.err("objective.burst.min_rate", m))?;
    finite(o.silence.ceiling.get()).map_err(|m| cx.err("objective.silence.ceiling", m))?;
    let times: Vec<f64> = o.timing.times.iter().map(|t| t.get()).collect();
    let timing =
        crate::policy::SpikeTrain::new(&times).map_err(|m| cx.err("objective.timing.times", m))?;
    positive(o.timing.window.get()).map_err(|m| cx.err("objective.timing.window", m))?;
    let wave = |w: &RawWave<_>, at: &str| -> Result<Waveform, ConfigError> {
        positive(w.period.get()).map_err(|m| cx.err(&format!("{at}.period"), m))?;
        finite(w.offset.get()).map_err(|m| cx.err(&format!("{at}.offset"), m))?;
        finite(w.amplitude.get()).map_err(|m| cx.err(&format!("{at}.amplitude"), m))?;
        Ok(Waveform {
            shape: w.shape,
            offset: w.offset.get(),
            amplitude: w.amplitude.get(),
            period_ms: w.period.get(),
        })
    };
    let reference = {
        let w = &o.voltage;
        positive(w.period.get()).map_err(|m| cx.err("objective.voltage.period", m))?;
        Waveform {
            shape: w.shape,
            offset: w.offset.get(),
            amplitude: w.amplitude.get(),
            period_ms: w.period.get(),
        }
    };
    let open = wave(&raw.open, "open")?;
    if open.offset.abs() + open.amplitude.abs() > safety.max_amplitude {
        return Err(cx.err(
                "open.amplitude",
                format!(
                    "|offset| + |amplitude| = {} uA/cm2 exceeds safety.max_amplitude ({}); the limiter would clip the waveform",
                    open.offset.abs() + open.amplitude.abs(),
                    safety.max_amplitude
                ),
            ));
    }
    let objective = Objective {
        kind: raw.control.objective,
        settle_ms: o.settle.get(),
        reference,
        rate,
        rate_bin_ms: o.rate.bin.get(),
        max_isi_ms: o.burst.max_isi.get(),
        min_rate_hz: o.burst.min_rate.get(),
        ceiling_mv: o.silence.ceiling.get(),
        timing,
        timing_window_ms: o.timing.window.get(),
        burst_single_credit: 0.0,
    };
    Ok((objective, open))
}

/// `[mpc]`: the planner's search.
fn mpc(m: &RawMpc, cx: &Cx) -> Result<crate::policy::mpc::MpcConfig, ConfigError> {
    let range = |key: &str, v: usize, lo: usize, hi: usize| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(cx.err(key, format!("{v} is outside {lo} ..= {hi}")))
        }
    };
    range("mpc.candidates", m.candidates, 2, 256)?;
    let d = m.actuation_delay.get();
    if !(0.0..=50.0).contains(&d) {
        return Err(cx.err(
            "mpc.actuation_delay",
            format!("{d} ms is outside 0 ..= 50 ms"),
        ));
    }
    positive(m.max_amplitude.get()).map_err(|e| cx.err("mpc.max_amplitude", e))?;
    range("mpc.iterations", m.iterations, 1, 100)?;
    range("mpc.elites", m.elites, 1, m.candidates)?;
    non_negative(m.charge_weight).map_err(|e| cx.err("mpc.charge_weight", e))?;
    non_negative(m.smoothness).map_err(|e| cx.err("mpc.smoothness", e))?;
    positive(m.time_budget.get()).map_err(|e| cx.err("mpc.time_budget", e))?;
    finite(m.spike_threshold.get()).map_err(|e| cx.err("mpc.spike_threshold", e))?;
    if !(m.spread > 0.0 && m.spread <= 2.0) {
        return Err(cx.err("mpc.spread", format!("{} is outside (0, 2]", m.spread)));
    }
    non_negative(m.window_filter.get()).map_err(|e| cx.err("mpc.window_filter", e))?;
    if !(0.0..=10.0).contains(&m.burst_single_credit) {
        return Err(cx.err(
            "mpc.burst_single_credit",
            format!("{} is outside 0 ..= 10", m.burst_single_credit),
        ));
    }
    let margin = m.silence_margin.get();
    if !(-10.0..=10.0).contains(&margin) {
        return Err(cx.err(
            "mpc.silence_margin",
            format!("{margin} mV is outside -10 ..= 10 mV"),
        ));
    }
    if !(0.0..=1.0).contains(&m.bias_gain) {
        return Err(cx.err(
            "mpc.bias_gain",
            format!("{} is outside 0 ..= 1", m.bias_gain),
        ));
    }
    Ok(crate::policy::mpc::MpcConfig {
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
        model_spike_threshold: m.model_spike_threshold,
        spread: m.spread,
        bias_gain: m.bias_gain,
        seed: m.seed,
        actuation_delay_ms: m.actuation_delay.get(),
        plan_reflex: m.plan_reflex,
        silence_margin_mv: m.silence_margin.get(),
        window_filter_ms: m.window_filter.get(),
        burst_single_credit: m.burst_single_credit,
    })
}

/// `[pid]`: the classical baselines' gains.
fn pid(p: &RawPid, cx: &Cx) -> Result<crate::policy::pid::PidGains, ConfigError> {
    for (key, v) in [
        ("pid.rate_kp", p.rate_kp),
        ("pid.rate_ki", p.rate_ki),
        ("pid.voltage_kp", p.voltage_kp),
        ("pid.voltage_ki", p.voltage_ki),
        ("pid.voltage_kd", p.voltage_kd),
        ("pid.voltage_filter", p.voltage_filter.get()),
        ("pid.silence_margin", p.silence_margin.get()),
        ("pid.burst_target", p.burst_target.get()),
        ("pid.pulse_amplitude", p.pulse_amplitude.get()),
        ("pid.pulse_lead", p.pulse_lead.get()),
        ("pid.rate_ff_tau", p.rate_ff_tau.get()),
        ("pid.burst_pulse_delay", p.burst_pulse_delay.get()),
    ] {
        non_negative(v).map_err(|e| cx.err(key, e))?;
    }
    positive(p.rate_tau.get()).map_err(|e| cx.err("pid.rate_tau", e))?;
    positive(p.pulse_width.get()).map_err(|e| cx.err("pid.pulse_width", e))?;
    finite(p.pulse_hold.get()).map_err(|e| cx.err("pid.pulse_hold", e))?;
    positive(p.burst_pulse_width.get()).map_err(|e| cx.err("pid.burst_pulse_width", e))?;
    finite(p.burst_pulse.get()).map_err(|e| cx.err("pid.burst_pulse", e))?;
    finite(p.burst_hold.get()).map_err(|e| cx.err("pid.burst_hold", e))?;
    let points: Vec<(f64, f64)> = p.rate_ff.iter().map(|q| (q[0], q[1])).collect();
    let rate_ff =
        crate::policy::pid::FeedForward::new(&points).map_err(|m| cx.err("pid.rate_ff", m))?;
    Ok(crate::policy::pid::PidGains {
        rate_kp: p.rate_kp,
        rate_ki: p.rate_ki,
        rate_tau_ms: p.rate_tau.get(),
        voltage_kp: p.voltage_kp,
        voltage_ki: p.voltage_ki,
        voltage_kd: p.voltage_kd,
        voltage_filter_ms: p.voltage_filter.get(),
        silence_margin_mv: p.silence_margin.get(),
        burst_target_hz: p.burst_target.get(),
        rate_ff,
        rate_ff_tau_ms: p.rate_ff_tau.get(),
        pulse_amplitude: p.pulse_amplitude.get(),
        pulse_lead_ms: p.pulse_lead.get(),
        pulse_width_ms: p.pulse_width.get(),
        pulse_hold: p.pulse_hold.get(),
        burst_pulse: p.burst_pulse.get(),
        burst_pulse_delay_ms: p.burst_pulse_delay.get(),
        burst_pulse_width_ms: p.burst_pulse_width.get(),
        burst_hold: p.burst_hold.get(),
    })
}

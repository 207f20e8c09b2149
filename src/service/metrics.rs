//! Prometheus metrics in the text exposition format (0.0.4), served on
//! the configured address (loopback unless `service.metrics_public`).
//! Rendered on demand from the loop's live status and the latency
//! histograms; nothing here touches the real-time thread.

use super::State;
use crate::control::controls::LiveStatus;
use crate::policy::Objective;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use std::fmt::Write;
use std::sync::Arc;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Quantiles of each latency summary.
const QUANTILES: [(f64, &str); 4] = [(0.5, "0.5"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999")];

/// Label values escaped as the format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (k, (l, val)) in labels.iter().enumerate() {
                if k > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{l}=\"{}\"", esc(val));
            }
            self.0.push('}');
        }
        let text = if v.is_nan() {
            "NaN".to_string()
        } else if v.is_infinite() {
            if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
        } else {
            format!("{v}")
        };
        let _ = writeln!(self.0, " {text}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }
}

/// What the families' values are read from: one consistent snapshot per
/// scrape.
struct Now<'a> {
    state: &'a State,
    live: &'a LiveStatus,
    objective: &'a Objective,
}

/// How a single-sample family reads its value; `None` leaves the family
/// out of the scrape.
type Value = fn(&Now<'_>) -> Option<f64>;

/// A single-sample family: name, type, help, value.
type Family = (&'static str, &'static str, &'static str, Value);

fn flag(b: bool) -> Option<f64> {
    Some(f64::from(u8::from(b)))
}

/// The loop's state and counters, in exposition order (before the safety
/// interventions).
const LOOP_FAMILIES: &[Family] = &[
    ("neurostimd_running", "gauge", "1 while the control loop runs.", |n| {
        flag(n.live.running)
    }),
    (
        "neurostimd_armed",
        "gauge",
        "1 while stimulation is armed (0: held at zero by the operator).",
        |n| flag(n.live.armed),
    ),
    (
        "neurostimd_objective_target",
        "gauge",
        "Target of the objective in force, in its unit (Hz for rate and burst, mV for voltage and silence).",
        |n| Some(super::api::target_of(n.objective)),
    ),
    (
        "neurostimd_loop_iterations_total",
        "counter",
        "Control loop iterations (its heartbeat).",
        |n| Some(n.live.heartbeat as f64),
    ),
    (
        "neurostimd_samples_total",
        "counter",
        "Samples the loop answered.",
        |n| Some(n.live.samples as f64),
    ),
    (
        "neurostimd_lost_samples_total",
        "counter",
        "Samples the plant skipped (gaps in its sample index).",
        |n| Some(n.live.lost_samples as f64),
    ),
    (
        "neurostimd_plant_interruptions_total",
        "counter",
        "Plant stalls/disconnects reported (stimulation held at zero).",
        |n| Some(n.live.plant_interruptions as f64),
    ),
    (
        "neurostimd_records_dropped_total",
        "counter",
        "Sample records the consumer could not take in time.",
        |n| Some(n.live.records_dropped as f64),
    ),
    (
        "neurostimd_spikes_total",
        "counter",
        "Spikes the loop detected.",
        |n| Some(n.live.spikes as f64),
    ),
    (
        "neurostimd_plans_adopted_total",
        "counter",
        "MPC plans the loop started using.",
        |n| Some(n.live.plans_adopted as f64),
    ),
    (
        "neurostimd_late_plans_total",
        "counter",
        "Plans that arrived after the planning delay.",
        |n| Some(n.live.late_plans as f64),
    ),
    (
        "neurostimd_plan_misses_total",
        "counter",
        "Times a plan ran out with no fresher one (stimulation to zero).",
        |n| Some(n.live.plan_misses as f64),
    ),
    (
        "neurostimd_plan_miss_samples_total",
        "counter",
        "Samples spent in a plan miss.",
        |n| Some(n.live.plan_miss_samples as f64),
    ),
    (
        "neurostimd_disarmed_samples_total",
        "counter",
        "Samples with stimulation disarmed by the operator.",
        |n| Some(n.live.disarmed_samples as f64),
    ),
    (
        "neurostimd_plan_misses_sustained",
        "gauge",
        "1 while plans have been missing their deadline for two seconds or more (also a warning in the log).",
        |n| flag(n.state.plan_misses_sustained.load(std::sync::atomic::Ordering::Relaxed)),
    ),
];

/// Stimulation and plant figures, in exposition order (after the safety
/// interventions).
const STIM_FAMILIES: &[Family] = &[
    (
        "neurostimd_stimulation_charge_nc_cm2_total",
        "counter",
        "Total |charge| of the stimulation let through, nC/cm2.",
        |n| Some(n.live.charge_delivered_nc_cm2),
    ),
    (
        "neurostimd_net_charge_nc_cm2",
        "gauge",
        "Leaky net (signed) charge integral the limiter bounds, nC/cm2.",
        |n| Some(n.live.net_charge_nc_cm2),
    ),
    (
        "neurostimd_stimulation_ua_cm2",
        "gauge",
        "Last stimulation command written, uA/cm2.",
        |n| Some(n.live.last_command_ua_cm2),
    ),
    (
        "neurostimd_plant_time_seconds",
        "gauge",
        "Plant time of the newest sample, s.",
        |n| Some(n.live.plant_time_s),
    ),
    (
        "neurostimd_forecast_error_mv",
        "gauge",
        "RMS of recent subthreshold forecast errors (previous plan's forecast vs the sample), mV.",
        |n| n.live.forecast_error_mv,
    ),
];

impl Out {
    fn families(&mut self, table: &[Family], now: &Now<'_>) {
        for &(name, kind, help, value) in table {
            if let Some(v) = value(now) {
                self.one(name, kind, help, v);
            }
        }
    }
}

/// The metrics text.
pub fn render(state: &State) -> String {
    let live = state.controls.status();
    let mut o = Out(String::with_capacity(8 * 1024));
    let (_, objective) = *state.objective.lock().unwrap_or_else(|e| e.into_inner());
    let now = Now {
        state,
        live: &live,
        objective: &objective,
    };
    render_info(&mut o, state, &objective);
    o.families(LOOP_FAMILIES, &now);
    o.family(
        "neurostimd_safety_interventions_total",
        "counter",
        "Commands the safety limiter changed, by cause.",
    );
    for (cause, n) in &live.interventions {
        o.sample(
            "neurostimd_safety_interventions_total",
            &[("cause", cause)],
            *n as f64,
        );
    }
    render_guard(&mut o, &live);
    o.families(STIM_FAMILIES, &now);
    render_model(&mut o, state);
    render_latency(&mut o, state);
    o.0
}

/// The MPC guard: hand-overs by direction (as the loop applied them) and
/// whether the fallback drives now (0 for the other policies).
fn render_guard(o: &mut Out, live: &LiveStatus) {
    o.family(
        "neurostimd_guard_handovers_total",
        "counter",
        "MPC guard hand-overs: to_fallback (MPC judged harmful) and to_mpc (a model passed the gate).",
    );
    for (direction, n) in [
        ("to_fallback", live.guard_to_fallback),
        ("to_mpc", live.guard_to_mpc),
    ] {
        o.sample(
            "neurostimd_guard_handovers_total",
            &[("direction", direction)],
            n as f64,
        );
    }
    o.family(
        "neurostimd_guard_fallback",
        "gauge",
        "1 while the MPC guard's fallback policy drives instead of MPC.",
    );
    o.sample(
        "neurostimd_guard_fallback",
        &[],
        f64::from(u8::from(live.guard_in_fallback)),
    );
}

fn render_info(o: &mut Out, state: &State, objective: &Objective) {
    let info = &state.info;
    o.family(
        "neurostimd_info",
        "gauge",
        "The run: plant, policy, objective in force, clock (value 1).",
    );
    o.sample(
        "neurostimd_info",
        &[
            ("plant", info.plant),
            ("policy", info.policy),
            ("objective", objective.kind.name()),
            ("clock", info.clock),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1.0,
    );
}

/// Model version and retraining state.
fn render_model(o: &mut Out, state: &State) {
    let info = &state.info;
    let (name, sha, version, retraining) = match &state.model_ops {
        Some(ops) => {
            let s = ops.status();
            // Retraining's own figures: the drift monitor's rolling error
            // (every horizon step of every plan), its reference, and the
            // attempts by outcome.
            for (key, metric, help) in [
                (
                    "rolling_forecast_rmse_mv",
                    "neurostimd_forecast_rolling_rmse_mv",
                    "Rolling RMS error of the planners' forecasts over every horizon step against the V that followed (drift monitor window), mV.",
                ),
                (
                    "reference_rmse_mv",
                    "neurostimd_forecast_reference_rmse_mv",
                    "The running model's reference error that drift is measured against, mV.",
                ),
            ] {
                if let Some(x) = s.get(key).and_then(|v| v.as_f64()) {
                    o.one(metric, "gauge", help, x);
                }
            }
            if let Some(list) = s.get("attempts").and_then(|v| v.as_array()) {
                let accepted = list
                    .iter()
                    .filter(|a| a["accepted"].as_bool() == Some(true))
                    .count();
                o.family(
                    "neurostimd_retraining_attempts_total",
                    "counter",
                    "Retraining attempts by outcome (accepted: swapped in; not_accepted: rejected by the gate or no candidate).",
                );
                o.sample(
                    "neurostimd_retraining_attempts_total",
                    &[("outcome", "accepted")],
                    accepted as f64,
                );
                o.sample(
                    "neurostimd_retraining_attempts_total",
                    &[("outcome", "not_accepted")],
                    (list.len() - accepted) as f64,
                );
            }
            let text = |k: &str| s.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            (
                text("name"),
                text("sha256"),
                s.get("version").and_then(|v| v.as_f64()),
                s.get("state")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown")
                    .to_string(),
            )
        }
        None => (
            info.model
                .as_ref()
                .map_or(String::new(), |m| m.name.clone()),
            info.model
                .as_ref()
                .map_or(String::new(), |m| m.sha256.clone()),
            None,
            "disabled".to_string(),
        ),
    };
    if !name.is_empty() || !sha.is_empty() {
        o.family(
            "neurostimd_model_info",
            "gauge",
            "The forecaster in use: card name and ONNX sha256 (value 1).",
        );
        o.sample(
            "neurostimd_model_info",
            &[("name", &name), ("sha256", &sha)],
            1.0,
        );
    }
    if let Some(v) = version {
        o.one(
            "neurostimd_model_version",
            "gauge",
            "Version number of the model in use (retraining).",
            v,
        );
    }
    o.family(
        "neurostimd_retraining_state",
        "gauge",
        "Retraining state: 1 for the current state.",
    );
    let mut states = vec!["disabled", "idle", "training", "validating", "failed"];
    if !states.contains(&retraining.as_str()) {
        states.push(&retraining);
    }
    for s in states {
        o.sample(
            "neurostimd_retraining_state",
            &[("state", s)],
            f64::from(u8::from(s == retraining)),
        );
    }
}

/// Latency summaries.
fn render_latency(o: &mut Out, state: &State) {
    let lat = state.latency.snapshot();
    o.family(
        "neurostimd_latency_seconds",
        "summary",
        "Loop latencies since start (HdrHistogram, 3 significant digits): sample_to_command, wakeup_jitter, plan_latency, decision_age, forecast_time.",
    );
    let hist = state.latency.clone();
    for t in &lat.tags {
        let Some(p) = &t.total else { continue };
        for (q, label) in QUANTILES {
            o.sample(
                "neurostimd_latency_seconds",
                &[("kind", t.tag), ("quantile", label)],
                hist.quantile_ns(t.tag, q).unwrap_or(f64::NAN) / 1e9,
            );
        }
        o.sample(
            "neurostimd_latency_seconds_sum",
            &[("kind", t.tag)],
            t.sum_ns / 1e9,
        );
        o.sample(
            "neurostimd_latency_seconds_count",
            &[("kind", t.tag)],
            p.count as f64,
        );
    }
    o.family(
        "neurostimd_latency_max_seconds",
        "gauge",
        "Largest latency since start, by kind.",
    );
    for t in &lat.tags {
        if let Some(p) = &t.total {
            o.sample(
                "neurostimd_latency_max_seconds",
                &[("kind", t.tag)],
                p.max_us / 1e6,
            );
        }
    }
}

/// Serve `GET /metrics` until the task is aborted, within
/// [`super::conn::ClientLimits::DEFAULT`].
pub async fn serve(state: Arc<State>, listener: tokio::net::TcpListener) {
    let handler: super::conn::Handler =
        Arc::new(move |req: hyper::Request<hyper::body::Incoming>| {
            let st = state.clone();
            Box::pin(async move {
                let resp = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                    Response::builder()
                        .header("content-type", CONTENT_TYPE)
                        .body(Full::new(Bytes::from(render(&st))))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"GET /metrics\n")))
                };
                resp.expect("static response parts are valid")
            })
        });
    super::conn::serve(
        listener,
        "metrics",
        super::conn::ClientLimits::DEFAULT,
        handler,
    )
    .await
}

//! The control API: HTTP/1.1 + JSON on the Unix socket (hyper, no
//! framework: eight routes do not need a router).
//!
//! | method, path | what it does |
//! |---|---|
//! | `GET /status` | plant, policy, objective, model, rates, counters |
//! | `POST /arm`, `POST /disarm` | stimulation on (at the next control-period boundary) / to zero (next sample) |
//! | `POST /objective` `{"kind": "rate", "target": 12}` | change objective and target |
//! | `POST /model/retrain`, `POST /model/rollback` | through [`super::ModelOps`]; 503 without it |
//! | `GET /latency` | latency percentiles, whole run and newest interval |
//! | `GET /metrics` | the Prometheus text (as on the metrics port) |
//! | `POST /shutdown` | stop as SIGTERM does |
//!
//! Every refusal is a 4xx with `{"error": "..."}` saying what was wrong and
//! what is allowed, and changes nothing: a request is parsed and checked
//! completely before anything is posted to the loop.

use super::State;
use crate::policy::{Objective, ObjectiveKind, RateSchedule};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// At most one line a second about refused requests.
static REFUSAL_LOG: LogLimiter = LogLimiter::new();

/// A once-a-second gate for log lines, counting what it held back.
pub struct LogLimiter {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogLimiter {
    pub const fn new() -> LogLimiter {
        LogLimiter {
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` if a line may go out now.
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.0 {
            Some(t) if now.saturating_duration_since(t) < std::time::Duration::from_secs(1) => {
                st.1 += 1;
                None
            }
            _ => {
                let held = st.1;
                *st = (Some(now), 0);
                Some(held)
            }
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// Largest request body accepted, bytes.
const MAX_BODY: usize = 16 * 1024;

/// Bounds on targets an operator may set through the API, by objective.
/// They keep a typo (120 Hz for 12 Hz, +60 mV for −60 mV) from becoming an
/// experiment; the safety limiter still bounds the stimulation whatever
/// the target.
pub struct TargetLimits;

impl TargetLimits {
    /// `rate`: target firing rate, Hz.
    pub const RATE_HZ: (f64, f64) = (0.0, 100.0);
    /// `voltage`: reference offset, mV (subthreshold range).
    pub const VOLTAGE_MV: (f64, f64) = (-90.0, -50.0);
    /// `silence`: ceiling, mV.
    pub const CEILING_MV: (f64, f64) = (-90.0, -40.0);
    /// `burst`: the least firing rate to keep, Hz.
    pub const MIN_RATE_HZ: (f64, f64) = (0.0, 50.0);
    /// `timing`: the window a spike must fall in around its target, ms.
    pub const TIMING_WINDOW_MS: (f64, f64) = (0.1, 50.0);

    /// The bounds and unit for `kind`.
    pub fn of(kind: ObjectiveKind) -> ((f64, f64), &'static str, &'static str) {
        match kind {
            ObjectiveKind::Rate => (Self::RATE_HZ, "Hz", "target firing rate"),
            ObjectiveKind::Voltage => (Self::VOLTAGE_MV, "mV", "reference offset"),
            ObjectiveKind::Silence => (Self::CEILING_MV, "mV", "ceiling"),
            ObjectiveKind::Burst => (Self::MIN_RATE_HZ, "Hz", "least firing rate to keep"),
            ObjectiveKind::Timing => (Self::TIMING_WINDOW_MS, "ms", "spike-time window"),
        }
    }
}

/// `POST /objective`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveRequest {
    pub kind: ObjectiveKind,
    /// In the unit of `kind` (see [`TargetLimits`]); absent: keep the
    /// objective's current parameters.
    #[serde(default)]
    pub target: Option<f64>,
}

/// An API refusal: status and message.
#[derive(Debug, PartialEq)]
pub struct Refusal(pub StatusCode, pub String);

/// The target a (possibly changed) objective pursues, in its unit.
pub fn target_of(o: &Objective) -> f64 {
    match o.kind {
        ObjectiveKind::Rate => o.rate.steps().last().map_or(0.0, |s| s.1),
        ObjectiveKind::Voltage => o.reference.offset,
        ObjectiveKind::Silence => o.ceiling_mv,
        ObjectiveKind::Burst => o.min_rate_hz,
        ObjectiveKind::Timing => o.timing_window_ms,
    }
}

/// JSON view of an objective.
pub fn objective_json(o: &Objective) -> serde_json::Value {
    let (_, unit, what) = TargetLimits::of(o.kind);
    let mut v = json!({
        "kind": o.kind.name(),
        "target": target_of(o),
        "unit": unit,
        "target_is": what,
    });
    if o.kind == ObjectiveKind::Rate && o.rate.steps().len() > 1 {
        v["schedule_hz"] = json!(o.rate.steps());
    }
    v
}

/// Apply a request to the current objective: the new objective, or why
/// not. Pure, so the checks are unit-tested.
pub fn apply_objective(current: &Objective, body: &[u8]) -> Result<Objective, Refusal> {
    let req: ObjectiveRequest = parse_json(body)?;
    let mut o = *current;
    o.kind = req.kind;
    if let Some(t) = req.target {
        let ((lo, hi), unit, what) = TargetLimits::of(req.kind);
        if !(t.is_finite() && (lo..=hi).contains(&t)) {
            return Err(Refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "target {t} {unit} is outside the allowed {what} for objective {}: {lo} ..= {hi} {unit}; nothing changed",
                    req.kind.name()
                ),
            ));
        }
        match req.kind {
            ObjectiveKind::Rate => {
                o.rate = RateSchedule::new(&[(0.0, t)])
                    .map_err(|m| Refusal(StatusCode::UNPROCESSABLE_ENTITY, m))?;
            }
            ObjectiveKind::Voltage => o.reference.offset = t,
            ObjectiveKind::Silence => o.ceiling_mv = t,
            ObjectiveKind::Burst => o.min_rate_hz = t,
            ObjectiveKind::Timing => o.timing_window_ms = t,
        }
    }
    Ok(o)
}

/// Parse a JSON body strictly; refusals say where and what.
fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "expected a JSON object body; nothing changed".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Refusal(
            StatusCode::BAD_REQUEST,
            format!("malformed request: {e}; nothing changed"),
        )
    })
}

/// Calls without parameters take no body, or an empty JSON object.
fn expect_no_params(body: &[u8]) -> Result<(), Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) if m.is_empty() => Ok(()),
        Ok(serde_json::Value::Object(m)) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown field `{}`: this call takes no parameters; nothing changed",
                m.keys().next().map(String::as_str).unwrap_or("")
            ),
        )),
        Ok(_) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            "expected no body or {}; nothing changed".into(),
        )),
        Err(e) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            format!("malformed request: {e}; nothing changed"),
        )),
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, v: serde_json::Value) -> Resp {
    let mut text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .expect("static response parts are valid")
}

fn refuse(r: Refusal) -> Resp {
    reply(r.0, json!({ "error": r.1 }))
}

/// Accept connections until the task is aborted, within
/// [`super::conn::ClientLimits::DEFAULT`].
pub async fn serve(state: Arc<State>, listener: tokio::net::UnixListener) {
    let handler: super::conn::Handler = Arc::new(move |req| {
        let st = state.clone();
        Box::pin(async move { handle(&st, req).await })
    });
    super::conn::serve(
        listener,
        "control API",
        super::conn::ClientLimits::DEFAULT,
        handler,
    )
    .await
}

/// One request.
pub async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return refuse(Refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body unreadable or over {MAX_BODY} bytes: {e}"),
            ))
        }
    };
    let r = route(state, &method, &path, &body).await;
    match &r {
        Ok(resp) if method != Method::GET => {
            tracing::info!(%method, %path, status = resp.status().as_u16(), "control API")
        }
        Err(Refusal(s, m)) => {
            // An abusive client must not flood the journal: one line a
            // second at most, saying how many were not logged.
            if let Some(quiet) = REFUSAL_LOG.admit(std::time::Instant::now()) {
                let also = if quiet > 0 {
                    format!(" ({quiet} more refusals not logged in the last second)")
                } else {
                    String::new()
                };
                tracing::warn!(%method, %path, status = s.as_u16(), "control API refused: {m}{also}")
            }
        }
        _ => {}
    }
    r.unwrap_or_else(refuse)
}

async fn route(
    state: &Arc<State>,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Resp, Refusal> {
    let routes: &[(&str, Method)] = &[
        ("/status", Method::GET),
        ("/latency", Method::GET),
        ("/metrics", Method::GET),
        ("/arm", Method::POST),
        ("/disarm", Method::POST),
        ("/objective", Method::POST),
        ("/model/retrain", Method::POST),
        ("/model/rollback", Method::POST),
        ("/shutdown", Method::POST),
    ];
    let Some((_, allowed)) = routes.iter().find(|(p, _)| *p == path) else {
        let known: Vec<&str> = routes.iter().map(|r| r.0).collect();
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("no such call {path}; calls: {}", known.join(", ")),
        ));
    };
    if method != allowed {
        return Err(Refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes {allowed}, not {method}"),
        ));
    }
    match path {
        "/status" => Ok(reply(StatusCode::OK, status_json(state))),
        "/latency" => Ok(reply(
            StatusCode::OK,
            serde_json::to_value(state.latency.snapshot()).unwrap_or_default(),
        )),
        "/metrics" => Ok(Response::builder()
            .header("content-type", super::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(super::metrics::render(state))))
            .expect("static response parts are valid")),
        "/arm" | "/disarm" => set_armed(state, path, body),
        "/objective" => set_objective(state, body),
        "/model/retrain" | "/model/rollback" => model_op(state, path, body).await,
        "/shutdown" => {
            expect_no_params(body)?;
            state.stop.store(true, Ordering::Relaxed);
            Ok(reply(
                StatusCode::ACCEPTED,
                json!({ "stopping": true, "sequence": "stimulation to zero, stop the loop, write reports, exit" }),
            ))
        }
        _ => unreachable!("every route is matched above"),
    }
}

/// `POST /arm`, `POST /disarm`.
fn set_armed(state: &State, path: &str, body: &[u8]) -> Result<Resp, Refusal> {
    expect_no_params(body)?;
    if state.controls.is_finished() {
        return Err(Refusal(
            StatusCode::CONFLICT,
            "the loop has ended; nothing changed".into(),
        ));
    }
    let arm = path == "/arm";
    if arm && state.info.policy == "off" {
        return Err(Refusal(
            StatusCode::CONFLICT,
            "policy off never stimulates; arming would change nothing".into(),
        ));
    }
    state.controls.set_armed(arm);
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({
            "armed": arm,
            "takes_effect": if arm { "at the next control-period boundary" } else { "at the next sample" },
        }),
    ))
}

/// `POST /objective`.
fn set_objective(state: &State, body: &[u8]) -> Result<Resp, Refusal> {
    if matches!(state.info.policy, "off" | "open") {
        // Checked first: the request would change nothing.
        return Err(Refusal(
            StatusCode::CONFLICT,
            format!(
                "policy {} does not pursue an objective; nothing changed",
                state.info.policy
            ),
        ));
    }
    let mut cur = state.objective.lock().unwrap_or_else(|e| e.into_inner());
    let o = apply_objective(&cur.1, body)?;
    if state.controls.is_finished() {
        return Err(Refusal(
            StatusCode::CONFLICT,
            "the loop has ended; nothing changed".into(),
        ));
    }
    let seq = state.controls.post_objective(o);
    *cur = (seq, o);
    Ok(reply(
        StatusCode::ACCEPTED,
        json!({
            "seq": seq,
            "objective": objective_json(&o),
            "takes_effect": "at the next control-period boundary (GET /status shows objective.applied)",
        }),
    ))
}

/// `POST /model/retrain`, `POST /model/rollback`: the operations block, so
/// they run on the blocking pool, not on the runtime's thread.
async fn model_op(state: &State, path: &str, body: &[u8]) -> Result<Resp, Refusal> {
    expect_no_params(body)?;
    let Some(ops) = state.model_ops.clone() else {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "retraining is not enabled in this build/config; the loaded model stays".into(),
        ));
    };
    let retrain = path == "/model/retrain";
    let r = tokio::task::spawn_blocking(move || {
        if retrain {
            ops.retrain()
        } else {
            ops.rollback()
        }
    })
    .await
    .map_err(|e| Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match r {
        Ok(v) => Ok(reply(StatusCode::OK, v)),
        Err(m) => Err(Refusal(StatusCode::CONFLICT, m)),
    }
}

/// `GET /status`.
pub fn status_json(state: &State) -> serde_json::Value {
    let live = state.controls.status();
    let (seq, objective) = *state.objective.lock().unwrap_or_else(|e| e.into_inner());
    let info = &state.info;
    let model = match &state.model_ops {
        Some(ops) => ops.status(),
        None => json!({
            "loaded": info.model,
            "retraining": "disabled",
        }),
    };
    let plant_s = live.plant_time_s.max(1e-9);
    json!({
        "plant": info.plant,
        "policy": info.policy,
        "clock": info.clock,
        "running": live.running,
        "finished": live.finished,
        "stopping": state.stop.load(Ordering::Relaxed),
        "armed": live.armed,
        "arm_requested": state.controls.armed_requested(),
        "objective": {
            "current": objective_json(&objective),
            "seq": seq,
            "applied": live.objective_seq >= seq,
        },
        "model": model,
        "rates": {
            "sample_rate_hz": info.sample_rate_hz,
            "control_period_ms": info.control_period_ms,
            "samples_per_plant_s": live.samples as f64 / plant_s,
            "plans_per_plant_s": live.plans_adopted as f64 / plant_s,
        },
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "report_dir": info.report_dir,
        "metrics": state.metrics_addr.map(|a| format!("http://{a}/metrics")),
        "counters": live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_lines_are_limited_to_one_a_second_and_count_the_rest() {
        let l = LogLimiter::new();
        let t0 = std::time::Instant::now();
        assert_eq!(l.admit(t0), Some(0));
        for k in 1..=5 {
            assert_eq!(
                l.admit(t0 + std::time::Duration::from_millis(100 * k)),
                None
            );
        }
        assert_eq!(l.admit(t0 + std::time::Duration::from_secs(1)), Some(5));
    }
    use crate::policy::test_support::objective;

    #[test]
    fn objective_changes_are_checked_before_anything_changes() {
        let cur = objective(ObjectiveKind::Rate);
        let o = apply_objective(&cur, br#"{"kind": "rate", "target": 12.5}"#).unwrap();
        assert_eq!((o.kind, o.rate.at(1e9)), (ObjectiveKind::Rate, 12.5));
        let o = apply_objective(&cur, br#"{"kind": "silence", "target": -62}"#).unwrap();
        assert_eq!((o.kind, o.ceiling_mv), (ObjectiveKind::Silence, -62.0));
        let o = apply_objective(&cur, br#"{"kind": "voltage"}"#).unwrap();
        assert_eq!(o.reference, cur.reference);

        let r = apply_objective(&cur, br#"{"kind": "rate", "target": 500}"#).unwrap_err();
        assert_eq!(r.0, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(r.1.contains("0 ..= 100 Hz"), "{}", r.1);
        let r = apply_objective(&cur, br#"{"kind": "rate", "target": 10, "gain": 2}"#).unwrap_err();
        assert_eq!(r.0, StatusCode::BAD_REQUEST);
        assert!(r.1.contains("unknown field `gain`"), "{}", r.1);
        let r = apply_objective(&cur, br#"{"kind": "bursty"}"#).unwrap_err();
        assert_eq!(r.0, StatusCode::BAD_REQUEST);
        assert!(r.1.contains("unknown variant"), "{}", r.1);
        let r = apply_objective(&cur, b"{kind: rate").unwrap_err();
        assert_eq!(r.0, StatusCode::BAD_REQUEST);
        let r = apply_objective(&cur, b"").unwrap_err();
        assert_eq!(r.0, StatusCode::BAD_REQUEST);
        let r = apply_objective(&cur, br#"{"kind": "voltage", "target": 1e400}"#).unwrap_err();
        assert_eq!(r.0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn parameterless_calls_refuse_parameters() {
        assert!(expect_no_params(b"").is_ok());
        assert!(expect_no_params(b" {} ").is_ok());
        let r = expect_no_params(br#"{"now": true}"#).unwrap_err();
        assert!(r.1.contains("unknown field `now`"), "{}", r.1);
        assert!(expect_no_params(b"[1]").is_err());
        assert!(expect_no_params(b"{").is_err());
    }

    #[test]
    fn objective_json_names_target_and_unit() {
        let v = objective_json(&objective(ObjectiveKind::Silence));
        assert_eq!(v["kind"], "silence");
        assert_eq!(v["target"], -60.0);
        assert_eq!(v["unit"], "mV");
    }
}

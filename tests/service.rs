//! The daemon as a service, on the real binary: systemd notifications
//! (READY, WATCHDOG, STOPPING) through a socket the test listens on, the
//! control API over its Unix socket (and `neurostimd ctl`), the metrics
//! scraped and parsed with a Prometheus text parser, and graceful shutdown
//! on SIGTERM/SIGINT. Times are never asserted beyond generous bounds; the
//! measured ones are printed.

use hyper::Method;
use neurostimd::service::client::{call, Answer};
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A config that keeps tests from fighting over the default metrics port
/// and from asking for real-time priority (CI machines refuse it anyway).
fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("test.toml");
    std::fs::write(
        &p,
        format!(
            "[service]\nmetrics = \"127.0.0.1:0\"\n[control]\nmodel = \"{}\"\n\
             [control.realtime]\nmlockall = false\npriority = 0\ncpu = \"none\"\n{extra}",
            root().join("models/ca1_lstm.onnx").display()
        ),
    )
    .unwrap();
    p
}

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(args: &[&str], extra_config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), extra_config);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurostimd"));
        cmd.args(["--plant", "sim", "--report", "rep", "--config"])
            .arg(&config)
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("JOURNAL_STREAM");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().expect("the binary starts"),
            dir,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("rep/control.sock")
    }

    fn call(&self, method: Method, path: &str, body: Option<&str>) -> Answer {
        call(
            &self.socket(),
            method,
            path,
            body.map(str::to_string),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn status(&self) -> serde_json::Value {
        let a = self.call(Method::GET, "/status", None);
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    /// Wait until the control API answers and the loop runs.
    fn wait_running(&self) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            if self.socket().exists() {
                if let Ok(a) = call(
                    &self.socket(),
                    Method::GET,
                    "/status",
                    None,
                    Duration::from_secs(5),
                ) {
                    let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
                    if v["running"] == true && v["counters"]["samples"].as_u64() > Some(1000) {
                        return v;
                    }
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the daemon did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Poll `/status` until `ok` holds (at most 20 s).
    fn wait_for(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let v = self.status();
            if ok(&v) {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{what}: {v:#}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the exit (at most `limit`); status, stdout, stderr.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, String, String) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                let mut err = String::new();
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (st, out, err);
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("the daemon did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    fn summary(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("rep/summary.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Read every datagram arriving within `within`, until `until` is seen.
fn notifications(sock: &UnixDatagram, until: &str, within: Duration) -> Vec<String> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while t0.elapsed() < within {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == until);
            got.push(msg);
            if done {
                break;
            }
        }
    }
    got
}

#[test]
fn sd_notify_ready_then_watchdog_while_running_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    // 0.4 s watchdog: fed every 0.2 s while the loop's heartbeat advances.
    let mut d = Daemon::start(
        &["--policy", "pid", "--duration", "3"],
        "",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let got = notifications(&sock, "STOPPING=1", Duration::from_secs(60));
    let (st, _, err) = d.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "{err}");
    let first = |key: &str| got.iter().position(|m| m.lines().any(|l| l == key));
    let ready = first("READY=1").unwrap_or_else(|| panic!("no READY=1 in {got:?}"));
    let stopping = first("STOPPING=1").unwrap_or_else(|| panic!("no STOPPING=1 in {got:?}"));
    let feeds: Vec<usize> = (0..got.len())
        .filter(|&k| got[k].lines().any(|l| l == "WATCHDOG=1"))
        .collect();
    assert!(
        got[ready].lines().any(|l| l.starts_with("STATUS=")),
        "{got:?}"
    );
    // READY before any WATCHDOG, several feeds in the 3 s run, all before
    // STOPPING.
    assert!(feeds.len() >= 3, "{} watchdog feeds: {got:?}", feeds.len());
    assert!(feeds.iter().all(|&k| k > ready && k < stopping), "{got:?}");
    eprintln!(
        "notifications: READY, {} x WATCHDOG, STOPPING ({} datagrams)",
        feeds.len(),
        got.len()
    );
}

#[test]
fn sigterm_and_sigint_drive_stimulation_to_zero_and_exit_0_with_reports() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        // No duration: runs until stopped. The shipped MPC, as in production,
        // writing a trace as well.
        let mut d = Daemon::start(&["--trace-out", "trace.csv"], "", &[]);
        d.wait_running();
        // Stimulating when the signal comes (so "to zero" means something).
        let before = d.wait_for("stimulation under way", |v| {
            v["counters"]["charge_delivered_nc_cm2"].as_f64() > Some(0.0)
        });
        assert!(before["counters"]["charge_delivered_nc_cm2"].as_f64() > Some(0.0));
        let t0 = Instant::now();
        d.signal(sig);
        let dir = d.dir.path().to_path_buf();
        let (st, out, err) = d.wait_exit(Duration::from_secs(20));
        let took = t0.elapsed();
        assert!(st.success(), "{name}: exit {st:?}\n{err}");
        assert!(out.contains("stop: Signal"), "{name}: {out}");
        let s = d.summary();
        assert_eq!(s["stop"], "signal");
        // The last command went through the limiter as a shutdown: zero.
        assert_eq!(s["interventions"]["shutdown"], 1, "{s:#}");
        for f in [
            "sample_to_command.hgrm",
            "plan_latency.hgrm",
            "latency.hlog",
        ] {
            assert!(dir.join("rep").join(f).exists(), "{name}: no {f}");
        }
        let trace = std::fs::read_to_string(dir.join("trace.csv")).unwrap();
        assert_eq!(
            trace.lines().count() as u64,
            s["samples"].as_u64().unwrap() + 1,
            "{name}: the trace has every sample"
        );
        assert!(
            !dir.join("rep/control.sock").exists(),
            "{name}: socket removed"
        );
        eprintln!(
            "{name}: exited 0 in {:.3} s after the signal",
            took.as_secs_f64()
        );
    }
}

#[test]
fn control_api_steers_the_loop_and_refuses_bad_requests_without_changing_anything() {
    let mut d = Daemon::start(&["--policy", "mpc"], "", &[]);
    let s0 = d.wait_running();
    assert_eq!(s0["plant"], "sim");
    assert_eq!(s0["policy"], "mpc");
    assert_eq!(s0["objective"]["current"]["kind"], "rate");
    assert_eq!(s0["objective"]["current"]["target"], 15.0);
    assert_eq!(s0["armed"], true);
    assert_eq!(s0["model"]["retraining"], "disabled");
    assert_eq!(
        s0["model"]["loaded"]["name"]
            .as_str()
            .map(|s| !s.is_empty()),
        Some(true)
    );
    assert_eq!(s0["rates"]["sample_rate_hz"], 10_000.0);

    // Refusals: 4xx, a message that says what is wrong, nothing changed.
    let bad: &[(Method, &str, Option<&str>, u16, &str)] = &[
        (
            Method::POST,
            "/objective",
            Some(r#"{"kind": "rate", "target": 500}"#),
            422,
            "0 ..= 100 Hz",
        ),
        (
            Method::POST,
            "/objective",
            Some(r#"{"kind": "voltage", "target": 20}"#),
            422,
            "reference offset",
        ),
        (
            Method::POST,
            "/objective",
            Some(r#"{"kind": "rate", "target": 10, "gain": 3}"#),
            400,
            "unknown field `gain`",
        ),
        (
            Method::POST,
            "/objective",
            Some(r#"{"kind": "rate", "target": "#),
            400,
            "malformed request",
        ),
        (
            Method::POST,
            "/objective",
            Some(r#"{"kind": "bursty"}"#),
            400,
            "unknown variant `bursty`",
        ),
        (
            Method::POST,
            "/objective",
            None,
            400,
            "expected a JSON object",
        ),
        (
            Method::POST,
            "/disarm",
            Some(r#"{"now": true}"#),
            400,
            "unknown field `now`",
        ),
        (
            Method::POST,
            "/shutdown",
            Some("please"),
            400,
            "malformed request",
        ),
        (Method::GET, "/arm", None, 405, "takes POST"),
        (Method::GET, "/nope", None, 404, "no such call /nope"),
        (
            Method::POST,
            "/model/retrain",
            None,
            503,
            "retraining is not enabled",
        ),
        (
            Method::POST,
            "/model/rollback",
            None,
            503,
            "retraining is not enabled",
        ),
    ];
    for (m, path, body, code, says) in bad {
        let a = d.call(m.clone(), path, *body);
        assert_eq!(a.status, *code, "{m} {path} {body:?}: {}", a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        let msg = v["error"].as_str().unwrap();
        assert!(msg.contains(says), "{m} {path}: {msg}");
    }
    let s1 = d.status();
    assert_eq!(s1["objective"]["current"], s0["objective"]["current"]);
    assert_eq!(s1["objective"]["seq"], 0);
    assert_eq!(s1["armed"], true);
    assert_eq!(s1["counters"]["disarmed_samples"], 0);
    assert_eq!(s1["stopping"], false);

    // The client binary: a refusal exits 2 with the message on stderr.
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_neurostimd"))
            .arg("ctl")
            .arg("--socket")
            .arg(d.socket())
            .args(args)
            .output()
            .unwrap()
    };
    let o = ctl(&["objective", "rate", "--target", "500"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("422 /objective: target 500 Hz"));

    // A change the loop applies at a control-period boundary.
    let o = ctl(&["objective", "rate", "--target", "8"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let posted: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let seq = posted["seq"].as_u64().unwrap();
    assert!(seq >= 1);
    let s2 = d.wait_for("objective applied", |v| v["objective"]["applied"] == true);
    assert_eq!(s2["objective"]["current"]["target"], 8.0);
    assert_eq!(s2["counters"]["objective_seq"], seq);

    // Disarm: stimulation held at zero while the loop goes on.
    let a = d.call(Method::POST, "/disarm", None);
    assert_eq!(a.status, 202, "{}", a.body);
    let s3 = d.wait_for("disarmed", |v| {
        v["armed"] == false && v["counters"]["disarmed_samples"].as_u64() > Some(2000)
    });
    assert_eq!(s3["counters"]["last_command_ua_cm2"], 0.0);
    let charge = s3["counters"]["charge_delivered_nc_cm2"].as_f64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let s4 = d.status();
    assert_eq!(
        s4["counters"]["charge_delivered_nc_cm2"].as_f64().unwrap(),
        charge,
        "no charge while disarmed"
    );
    assert!(s4["counters"]["samples"].as_u64() > s3["counters"]["samples"].as_u64());
    let o = ctl(&["arm"]);
    assert!(o.status.success());
    d.wait_for("re-armed", |v| {
        v["armed"] == true && v["counters"]["charge_delivered_nc_cm2"].as_f64() > Some(charge)
    });

    // Latency snapshot, once a one-second interval has closed.
    let t0 = Instant::now();
    let l = loop {
        let l: serde_json::Value =
            serde_json::from_str(&d.call(Method::GET, "/latency", None).body).unwrap();
        if l["intervals"].as_u64() > Some(0) {
            break l;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{l:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let tags = l["tags"].as_array().unwrap();
    let s2c = tags
        .iter()
        .find(|t| t["tag"] == "sample_to_command")
        .unwrap();
    assert!(s2c["total"]["count"].as_u64() > Some(1000), "{l:#}");
    assert!(s2c["total"]["p99_us"].as_f64() > Some(0.0));

    // Shutdown through the API: the same path as SIGTERM.
    let a = d.call(Method::POST, "/shutdown", Some("{}"));
    assert_eq!(a.status, 202, "{}", a.body);
    let (st, _, err) = d.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{err}");
    let s = d.summary();
    assert_eq!(s["stop"], "signal");
    assert!(s["disarmed_samples"].as_u64() > Some(2000), "{s:#}");
    assert_eq!(s["objective_changes"], 1, "{s:#}");
    // The refusals were logged as such.
    assert!(err.contains("control API refused"), "{err}");
}

/// GET a URL with a bare HTTP/1.0 request (no client library needed for
/// one call on loopback).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn metrics_scrape_parses_with_a_prometheus_text_parser() {
    use prometheus_parse::{Scrape, Value};
    let mut d = Daemon::start(&["--policy", "mpc"], "", &[]);
    let s = d.wait_running();
    // The metrics port was chosen by the OS (127.0.0.1:0); status says which.
    let url = s["metrics"].as_str().unwrap().to_string();
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{url}");
    // Let a few one-second latency intervals (10,000 samples each) close.
    d.wait_for("latency intervals", |v| {
        v["counters"]["samples"].as_u64() > Some(25_000)
    });
    let (head, body) = http_get(&addr, "/metrics");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("text/plain; version=0.0.4"),
        "{head}"
    );
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    let find = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{body}"))
    };
    let num = |v: &Value| match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("{other:?}"),
    };
    assert!(num(&find("neurostimd_samples_total", &[]).value) > 25_000.0);
    assert_eq!(num(&find("neurostimd_lost_samples_total", &[]).value), 0.0);
    // Present (the count depends on the machine's load: no SCHED_FIFO here).
    num(&find("neurostimd_plan_misses_total", &[]).value);
    assert!(num(&find("neurostimd_plans_adopted_total", &[]).value) > 100.0);
    assert!(num(&find("neurostimd_stimulation_charge_nc_cm2_total", &[]).value) > 0.0);
    for cause in ["amplitude", "slew", "plan_miss", "shutdown", "net_charge"] {
        num(&find("neurostimd_safety_interventions_total", &[("cause", cause)]).value);
    }
    let fe = num(&find("neurostimd_forecast_error_mv", &[]).value);
    assert!(
        fe.is_finite() && fe > 0.0 && fe < 20.0,
        "forecast error {fe} mV"
    );
    assert_eq!(
        num(&find("neurostimd_retraining_state", &[("state", "disabled")]).value),
        1.0
    );
    assert_eq!(
        num(&find("neurostimd_retraining_state", &[("state", "training")]).value),
        0.0
    );
    let card: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("models/ca1_lstm.json")).unwrap(),
    )
    .unwrap();
    let info = find("neurostimd_model_info", &[]);
    assert_eq!(
        info.labels.get("sha256"),
        card["onnx_sha256"].as_str(),
        "model version from the card"
    );
    // Latency summaries: the four quantiles in order, and a count.
    let summary = |kind: &str| {
        scrape
            .samples
            .iter()
            .find_map(|s| match &s.value {
                Value::Summary(v)
                    if s.metric == "neurostimd_latency_seconds"
                        && s.labels.get("kind") == Some(kind) =>
                {
                    Some(v.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {kind} summary in\n{body}"))
    };
    let s2c = summary("sample_to_command");
    let qs: Vec<f64> = s2c.iter().map(|c| c.quantile).collect();
    assert_eq!(qs, [0.5, 0.9, 0.99, 0.999]);
    let values: Vec<f64> = s2c.iter().map(|c| c.count).collect();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]) && values[0] > 0.0 && values[0] < 0.01,
        "sample->command quantiles (s) {values:?}"
    );
    assert_eq!(summary("plan_latency").len(), 4);
    assert!(
        num(&find(
            "neurostimd_latency_seconds_count",
            &[("kind", "sample_to_command")]
        )
        .value)
            >= 10_000.0
    );
    // Nothing was skipped: every sample line of the text became a sample
    // (the parser drops lines it cannot read).
    let lines = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            Value::Summary(v) => v.len(),
            Value::Histogram(v) => v.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(parsed, lines, "{body}");
    for l in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let kind = l.split_whitespace().nth(3).unwrap();
        assert!(["counter", "gauge", "summary"].contains(&kind), "{l}");
    }
    let (head, _) = http_get(&addr, "/other");
    assert!(head.contains(" 404 "), "{head}");
    // The same text on the control socket.
    let a = d.call(Method::GET, "/metrics", None);
    assert_eq!(a.status, 200);
    assert!(a.body.contains("neurostimd_samples_total"));
    d.signal(libc::SIGTERM);
    let (st, _, err) = d.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{err}");
}

#[test]
fn logs_under_systemd_carry_journal_priorities_and_no_timestamps() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let run = |journal: bool| {
        let log = dir
            .path()
            .join(if journal { "journal.log" } else { "plain.log" });
        let file = std::fs::File::create(&log).unwrap();
        let meta = file.metadata().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_neurostimd"));
        cmd.args([
            "--plant",
            "sim",
            "--policy",
            "off",
            "--clock",
            "free",
            "--duration",
            "0.3",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--report")
        .arg(dir.path().join(if journal { "r1" } else { "r2" }))
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(file)
        .env_remove("JOURNAL_STREAM");
        if journal {
            // What systemd sets when stderr is the journal's stream: the
            // device and inode of that stream (here: the log file).
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        assert!(cmd.status().unwrap().success());
        std::fs::read_to_string(log).unwrap()
    };
    let journal = run(true);
    let lines: Vec<&str> = journal.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines.iter().filter(|l| l.starts_with('<')) {
        assert!(
            l.starts_with("<6>neurostimd") || l.starts_with("<4>neurostimd"),
            "{l}"
        );
        assert!(!l.contains("Z  INFO") && !l.contains(" INFO "), "{l}");
    }
    assert!(
        journal.contains("<6>neurostimd: starting the closed loop"),
        "{journal}"
    );
    let plain = run(false);
    assert!(!plain.contains("<6>"), "{plain}");
    assert!(plain.contains(" INFO "), "{plain}");
}

/// Retraining through the control API of a recording daemon: on-demand
/// retraining runs and is decided, the model version and attempts show in
/// status and metrics, a rollback with nothing before v1 is refused, and
/// the recording holds the retraining events.
#[test]
fn retraining_and_rollback_through_the_api_are_recorded() {
    let mut d = Daemon::start(
        &["--duration", "60", "--retrain", "--record", "rec"],
        "[retrain]\nstate_dir = \"state\"\ndata = \"3 s\"\nepochs = 1\nstride = 8\non_drift = false\n",
        &[],
    );
    d.wait_running();
    let s = d.wait_for("retraining is bound", |v| v["model"]["state"] == "idle");
    assert_eq!(s["model"]["version"], 1, "{s:#}");
    let a = d.call(Method::POST, "/model/rollback", None);
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("nothing to roll back to"), "{}", a.body);
    let a = d.call(Method::POST, "/model/retrain", None);
    assert_eq!(a.status, 200, "{}", a.body);
    let s = d.wait_for("a retraining decision", |v| {
        v["model"]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    let attempt = &s["model"]["attempts"][0];
    assert_eq!(attempt["trigger"], "on demand");
    let accepted = attempt["accepted"] == true;
    let metrics = d.call(Method::GET, "/metrics", None).body;
    let expect_version = if accepted { 2 } else { 1 };
    assert!(
        metrics.contains(&format!("neurostimd_model_version {expect_version}")),
        "{metrics}"
    );
    let outcome = if accepted { "accepted" } else { "not_accepted" };
    assert!(
        metrics.contains(&format!(
            "neurostimd_retraining_attempts_total{{outcome=\"{outcome}\"}} 1"
        )),
        "{metrics}"
    );
    if accepted {
        let a = d.call(Method::POST, "/model/rollback", None);
        assert_eq!(a.status, 200, "{}", a.body);
        d.wait_for("v1 back", |v| v["model"]["version"] == 1);
    }
    let a = d.call(Method::POST, "/shutdown", None);
    assert_eq!(a.status, 202, "{}", a.body);
    let (st, _, err) = d.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "{err}");
    let summary = d.summary();
    assert_eq!(summary["retraining"]["attempts"][0]["accepted"], accepted);
    let rec = d.dir.path().join("rec");
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rec.join("neurostimd.json")).unwrap()).unwrap();
    assert_eq!(side["status"], "complete");
    let log =
        std::fs::read_to_string(rec.join("Record Node 100/experiment1/recording1/events.jsonl"))
            .unwrap();
    assert!(log.contains("retraining triggered (on demand)"), "{log}");
    assert!(log.contains(if accepted { "accepted" } else { "rejected" }));
    if accepted {
        assert!(log.contains("\"event\":\"model_swap\""));
        assert!(log.contains("rolled back from v2"));
    }
}

/// Abusive and careless clients on both listeners (issue 15): clients that
/// leave before, during and after their answer (this used to end the
/// daemon with SIGPIPE), hundreds of idle and half-open connections, a
/// slow sender, oversized headers and bodies, and a flood of concurrent
/// requests. The daemon runs on with no lost sample, still answers a
/// well-behaved client, and exits 0 on SIGTERM with its report.
#[test]
fn abusive_clients_never_take_the_daemon_down() {
    use std::os::unix::net::UnixStream;
    let mut d = Daemon::start(&["--policy", "mpc"], "", &[]);
    let s = d.wait_running();
    let sock = d.socket();
    let metrics = s["metrics"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");

    // 1. Leave before, during and right after the answer, on both.
    for k in 0..60 {
        let req = get(if k % 2 == 0 { "/status" } else { "/metrics" });
        let mut u = UnixStream::connect(&sock).unwrap();
        u.write_all(req.as_bytes()).unwrap();
        match k % 3 {
            0 => {}
            1 => {
                let mut b = [0u8; 16];
                let _ = u.read(&mut b);
            }
            _ => {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drop(u);
        let mut t = std::net::TcpStream::connect(&metrics).unwrap();
        t.write_all(get("/metrics").as_bytes()).unwrap();
        drop(t);
    }
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
    assert_eq!(d.status()["running"], true);

    // 2. Hundreds of idle and half-open connections, then a well-behaved
    // client still gets its answer.
    let mut held = Vec::new();
    for k in 0..300 {
        match UnixStream::connect(&sock) {
            Ok(mut u) => {
                if k % 2 == 1 {
                    let _ = u.write_all(b"GET /sta");
                }
                held.push(u);
            }
            Err(e) => panic!("connect {k}: {e}"),
        }
    }
    let mut held_tcp = Vec::new();
    for _ in 0..100 {
        if let Ok(t) = std::net::TcpStream::connect(&metrics) {
            held_tcp.push(t);
        }
    }
    let t0 = Instant::now();
    let v = d.status();
    eprintln!(
        "status answered in {:.1} ms with 400 idle/half-open connections held",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(v["running"], true);
    let (head, _) = http_get(&metrics, "/metrics");
    assert!(head.contains(" 200"), "{head}");

    // 3. A slow sender is cut off (header timeout), not served forever.
    let mut slow = UnixStream::connect(&sock).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t0 = Instant::now();
    let mut cut = false;
    for b in
        b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        if slow.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !cut {
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest);
        assert!(
            !text.contains("\"running\""),
            "a slow header was served: {text}"
        );
    }
    eprintln!(
        "slow sender cut off after {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // 4. Oversized header and body.
    let mut u = UnixStream::connect(&sock).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let big = format!(
        "GET /status HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let _ = u.write_all(big.as_bytes());
    let mut answer = String::new();
    let _ = u.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "oversized header: {}",
        &answer[..answer.len().min(200)]
    );
    let mut u = UnixStream::connect(&sock).unwrap();
    u.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = "x".repeat(100_000);
    let _ = write!(
        u,
        "POST /objective HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut answer = String::new();
    let _ = u.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 413"),
        "oversized body: {}",
        &answer[..answer.len().min(200)]
    );

    // 5. A flood of concurrent requests.
    let flood: Vec<_> = (0..8)
        .map(|k| {
            let sock = sock.clone();
            let metrics = metrics.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                for _ in 0..50 {
                    if k % 2 == 0 {
                        if let Ok(a) =
                            call(&sock, Method::GET, "/status", None, Duration::from_secs(20))
                        {
                            ok += usize::from(a.status == 200);
                        }
                    } else if let Ok(mut t) = std::net::TcpStream::connect(&metrics) {
                        let _ = t.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
                        let mut s = String::new();
                        let _ = t.read_to_string(&mut s);
                        ok += usize::from(s.starts_with("HTTP/1.0 200"));
                    }
                }
                ok
            })
        })
        .collect();
    let answered: usize = flood.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("flood: {answered} of 400 requests answered 200");
    assert!(
        answered >= 200,
        "only {answered} of 400 flood requests answered"
    );
    drop(held);
    drop(held_tcp);

    let v = d.status();
    assert_eq!(v["running"], true);
    assert_eq!(v["counters"]["lost_samples"], 0, "{v:#}");
    d.signal(libc::SIGTERM);
    let (st, _, err) = d.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "exit {st:?}\n{err}");
    let s = d.summary();
    assert_eq!(s["stop"], "signal");
    assert_eq!(s["lost_samples"], 0, "{s:#}");
    eprintln!(
        "after the abuse: {} samples, {} plan misses, 0 lost",
        s["samples"], s["plan_misses"]
    );
}
